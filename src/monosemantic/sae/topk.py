"""The TopK sparse autoencoder of Gao et al., *Scaling and evaluating sparse autoencoders* (OpenAI,
2024), with its AuxK loss.

    f(x) = ReLU(TopK_k(W_enc x + b_enc))               (n,), at most k nonzero
    x̂    = b_dec + W_dec f                             (d,)
    L    = ‖x − x̂‖² + α · AuxK

Sparsity is structural (exactly k candidates per token), so there is no penalty. Decoder columns
are kept at unit norm: the gradient component along each column is removed before the optimizer
step and the columns are renormalised after it. AuxK revives dead latents by asking the k_aux
largest dead pre-activations to reconstruct what the live ones missed.

The decoder runs sparse (``sae/sparse.py``); ``decode`` is the dense reference it is tested against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from monosemantic.sae.base import (
    ForwardOutput,
    LossContext,
    LossOutput,
    SparseAutoencoder,
    column_dots,
    mse_loss,
)
from monosemantic.sae.collectives import LOCAL
from monosemantic.sae.sparse import Active, column_entries, encoder_entries, sparse_decode
from monosemantic.sae.sparse import topk_per_row as topk_per_row  # re-exported: its home before sparse.py

if TYPE_CHECKING:
    from typing import Self

    from monosemantic.config import TrainConfig


def auxk_loss(
    x: Tensor,
    recon: Tensor,
    pre: Tensor,
    dead: Tensor | None,
    n_dead: int,
    k_aux: int,
    select: Callable[[Tensor, int], Active],
    decode: Callable[[Active], Tensor],
) -> Tensor:
    """AuxK (Gao et al. 2024, §A.2): reconstruct the residual e = x − x̂, held constant, from the
    ReLU of the top-k_aux pre-activations among the dead latents, through the decoder alone.

    Normalised as in OpenAI's reference code: Σ‖ê − e‖² / Σ‖e − ē‖² over the batch (ē the batch
    mean of e), so 1 means the dead latents explain nothing. 0 when no latent is dead.
    x, recon (B, d); pre (B, n); dead (n,) bool, ``n_dead`` of them (over every shard of the
    dictionary); ``select(pre, k)`` takes the k largest of each row and ``decode`` maps them to
    (B, d) without the bias (a feature shard selects and sums over ranks) -> ()."""
    zero = x.new_zeros(())
    if dead is None or n_dead == 0:
        return zero
    residual = (x - recon).detach()
    spread = (residual - residual.mean(0)).pow(2).sum()
    if spread <= 0:  # a single token, or a perfect reconstruction: nothing to learn
        return zero
    active = select(pre.masked_fill(~dead, float("-inf")), min(k_aux, n_dead))
    return (decode(active) - residual).pow(2).sum() / spread


def auxk_dead_only(
    x: Tensor,
    recon: Tensor,
    pre: Tensor,
    dead: Tensor,
    k_aux: int,
    entries: Callable[[Active], Active],
    decode: Callable[[Active], Tensor],
) -> Tensor:
    """``auxk_loss`` for a whole dictionary, its top-k_aux taken over the dead columns of pre
    (B, n) only (gathered first, (B, n_dead)) instead of over a masked copy of all of them, and
    without host synchronisation beyond finding the dead columns; ``entries`` gives the selected
    entries their gradient (``encoder_entries``)."""
    dead_idx = dead.nonzero().flatten()
    if dead_idx.numel() == 0:
        return x.new_zeros(())
    residual = (x - recon).detach()
    spread = (residual - residual.mean(0)).pow(2).sum()
    with torch.no_grad():
        picked = topk_per_row(pre[:, dead_idx], min(k_aux, dead_idx.numel()))
    active = entries(Active(picked.rows, dead_idx[picked.cols], picked.values))
    loss = (decode(active) - residual).pow(2).sum()
    # 0 for a single token or a perfect reconstruction (nothing to learn), without a branch on spread
    return torch.where(spread > 0, loss / spread.clamp_min(torch.finfo(spread.dtype).tiny), 0.0)


def auxk_dead_dense(
    x: Tensor,
    recon: Tensor,
    pre: Tensor,
    dead_idx: Tensor,
    k_aux: int,
    W_enc: Tensor,
    b_enc: Tensor,
    W_dec: Tensor,
    table: Tensor | None = None,
) -> Tensor:
    """``auxk_dead_only`` in the dense layout over the gathered dead columns dead_idx (n_dead,): the
    top-k_aux of each row of pre[:, dead_idx] (B, n_dead) scattered into a dense (B, n_dead) matrix,
    decoded by a dense matmul with W_dec's dead columns, its gradients dense matmuls over them
    (``column_entries``). When k_aux fills a large part of the dead columns (288 of ~600 at 2,048
    features early in a run) that costs less than the sparse layout's M = B·k_aux entries. ``table``:
    W_decᵀ contiguous (``ForwardOutput.decoder_table``), whose rows gather faster than W_dec's columns."""
    residual = (x - recon).detach()
    spread = (residual - residual.mean(0)).pow(2).sum()
    with torch.no_grad():
        dead_pre = pre.index_select(1, dead_idx)
        if k_aux >= dead_idx.numel():  # every dead latent is among the top k_aux: nothing to select
            acts = dead_pre.relu_()
        else:
            values, cols = dead_pre.topk(k_aux, dim=-1, sorted=False)
            acts = torch.zeros_like(dead_pre).scatter_(1, cols, torch.relu(values))
    acts = column_entries(acts, x, W_enc, b_enc, dead_idx)
    dead_dec = W_dec.index_select(1, dead_idx).T if table is None else table.index_select(0, dead_idx)
    loss = (acts @ dead_dec - residual).pow(2).sum()
    return torch.where(spread > 0, loss / spread.clamp_min(torch.finfo(spread.dtype).tiny), 0.0)


class TopKSAE(SparseAutoencoder):
    """``fast`` (default) computes the pre-activations without autograd and gives only the
    selected entries a gradient (``encoder_entries``; AuxK over the dead columns alone); False runs
    the plain autograd reference, which forms the dense (B, n) gradient. They agree to rounding
    (tests/test_sae_archs.py)."""

    arch = "topk"
    fast: bool = True
    grad_layout: str = "csr"
    aux_dense_above: float = 1 / 8
    """The fast AuxK runs dense over the gathered dead columns (``auxk_dead_dense``) when its k_aux
    entries per row fill more than this fraction of them, sparse (``auxk_dead_only``) otherwise."""

    centred: bool = False
    """Step the encoder in the centred parametrisation (``_centre``). A training
    setting (``TrainConfig.centred_encoder``), not a hyperparameter: the module always holds, saves
    and encodes with the plain pre = W_enc x + b_enc."""

    def __init__(
        self, d_model: int, n_features: int, k: int = 32, k_aux: int = 0, aux_coeff: float = 1 / 32
    ) -> None:
        super().__init__(d_model, n_features)
        self.k = k
        self.k_aux = k_aux or d_model // 2
        self.aux_coeff = aux_coeff

    @classmethod
    def from_config(cls, d_model: int, n_features: int, cfg: TrainConfig) -> Self:
        return cls(d_model, n_features, k=cfg.k, k_aux=cfg.k_aux, aux_coeff=cfg.aux_coeff)

    def configure(self, cfg: TrainConfig) -> None:
        self.centred = cfg.centred_encoder

    def hyperparameters(self) -> dict[str, Any]:
        return {"k": self.k, "k_aux": self.k_aux, "aux_coeff": self.aux_coeff}

    @torch.no_grad()
    def initialize(self, generator: torch.Generator, dec_norm: float = 1.0, enc_norm: float = 0.0) -> None:
        """As the base class, with unit-norm decoder columns by default; another ``dec_norm`` (an
        explicit --dec-init-norm) holds until the first optimizer step puts them back at norm 1."""
        super().initialize(generator, dec_norm=dec_norm, enc_norm=enc_norm)

    def select(self, pre: Tensor) -> Active:
        """The active features of pre (B, n): the k largest of each row (over every slice of a
        split dictionary)."""
        return self.collectives.top_k(pre, self.k)

    def activation(self, pre: Tensor) -> Tensor:
        flat = pre.reshape(-1, self.n_features)
        return self.select(flat).dense(*flat.shape).view_as(pre)

    def forward(self, x: Tensor) -> ForwardOutput:
        flat_x = x.reshape(-1, self.d_model)
        table = None
        if self.fast and not x.requires_grad:  # the fast path gives x no gradient (attribution needs it)
            with torch.no_grad():
                flat = torch.addmm(self.b_enc, flat_x, self.W_enc.T)
            # centred: the selected entries' W_enc gradient from x − b_dec (``_centre``)
            grad_x = flat_x - self.b_dec.detach() if self.centred else flat_x
            active = self._entries(self.select(flat), grad_x)
            table = self.W_dec.T.contiguous()
        else:
            flat = flat_x @ self.W_enc.T + self.b_enc
            if self.centred and torch.is_grad_enabled():
                # the same values, with the fast path's gradients: W_enc's from x − b_dec for the
                # selected entries, from x for AuxK's (which reads ``flat``)
                b = self.b_dec.detach()
                active = self.select((flat_x - b) @ self.W_enc.T + (self.b_enc + self.W_enc.detach() @ b))
            else:
                active = self.select(flat)
        recon = self.collectives.sum(sparse_decode(self.W_dec, active, flat.shape[0], table)) + self.b_dec
        pre = flat.view(*x.shape[:-1], self.n_features)
        feats = active.dense(*flat.shape).view_as(pre)
        return ForwardOutput(pre, feats, recon.view_as(x), active, decoder_table=table)

    def _entries(self, active: Active, x: Tensor) -> Active:
        return encoder_entries(active, x, self.W_enc, self.b_enc, self.grad_layout)

    def loss(self, x: Tensor, out: ForwardOutput, ctx: LossContext) -> LossOutput:
        """MSE and AuxK."""
        return self.combine(x, mse_loss(x, out.recon), self.auxk(x, out, ctx))

    def auxk(self, x: Tensor, out: ForwardOutput, ctx: LossContext) -> Tensor:
        """The AuxK term (``auxk_loss``) of a batch x (B, d); with a slice of the features, its
        top-k_aux runs over the dead latents of every slice and their decoded sum over the slices."""
        collectives = self.collectives
        batch = x.shape[0]
        if self.fast and ctx.dead is not None and collectives is LOCAL:
            dead_idx = ctx.dead.nonzero().flatten()
            if dead_idx.numel() == 0:
                return x.new_zeros(())
            if min(self.k_aux, dead_idx.numel()) > self.aux_dense_above * dead_idx.numel():
                flat = out.pre_acts.reshape(batch, -1)
                return auxk_dead_dense(
                    x,
                    out.recon,
                    flat,
                    dead_idx,
                    self.k_aux,
                    self.W_enc,
                    self.b_enc,
                    self.W_dec,
                    out.decoder_table,
                )
            return auxk_dead_only(
                x,
                out.recon,
                out.pre_acts.reshape(batch, -1),
                ctx.dead,
                self.k_aux,
                lambda active: self._entries(active, x),
                lambda active: sparse_decode(self.W_dec, active, batch, out.decoder_table),
            )

        def select(scores: Tensor, k: int) -> Active:
            # a feature shard: the ranks' top-k needs equal shapes, so it masks, then re-gathers
            active = collectives.top_k(scores, k)
            return self._entries(active, x) if self.fast else active

        n_dead = 0 if ctx.dead is None else int(collectives.count(ctx.dead.sum()))
        return auxk_loss(
            x,
            out.recon,
            out.pre_acts,
            ctx.dead,
            n_dead,
            self.k_aux,
            select,
            lambda active: collectives.sum(sparse_decode(self.W_dec, active, batch)),
        )

    def combine(self, x: Tensor, mse: Tensor, aux: Tensor) -> LossOutput:
        """mse + α · Var(x) · AuxK. OpenAI's objective is nmse + α · AuxK with both terms
        normalised; our mse is not (it is summed over d), so AuxK is scaled by the batch's total
        variance E‖x − x̄‖² to keep the paper's balance. Without that factor AuxK weighed ~1/300 of
        what Gao et al. intended on the demo and revived nothing."""
        variance = (x - x.mean(0)).pow(2).sum(-1).mean().detach()
        return LossOutput(mse + self.aux_coeff * variance * aux, mse, x.new_zeros(()), aux)

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """Remove from W_dec.grad its component along each decoder column, so that the step moves
        the columns (to first order) along the unit sphere. With ``centred``, b_enc then holds c
        for the step (``_centre``)."""
        grad, w = self.W_dec.grad, self.W_dec
        if grad is not None:
            along = column_dots(grad, w) / column_dots(w, w)
            grad.addcmul_(w, along, value=-1)  # in place: no (d, n) temporary of w * along
        if self.centred:
            self._centre()

    @torch.no_grad()
    def _centre(self) -> None:
        """Gao et al. (and sparsify, and OpenAI's code) encode pre = W_enc (x − b_dec) + c, so that
        the encoder's gradient Gᵀ(x − b_dec) carries no component along the data's mean; ours, Gᵀx,
        moves every token's pre-activation of a feature alike along it, and early in training the
        few features it favours win every token while the rest go silent. The parametrisations hold
        the same dictionaries (b_enc = c − W_enc b_dec) but not the same Adam steps, so with
        ``centred`` the optimizer steps (W_enc, c, b_dec): ``forward`` gives the selected entries
        the centred gradient of W_enc (∂c = ∂b_enc; b_dec's comes from the decoder alone), and b_enc
        holds c from here to ``after_optimizer_step``, which folds it back. AuxK's entries keep the
        plain gradient Gᵀx on purpose: its component along the mean lifts a dead latent's
        pre-activation on every token, which is what revives it (fully centred, 73% of 16,384
        latents were silent after 20k tokens on the demo store, this way 7.4%, both at encoder
        norm 1/√3; the old plain recipe 49%: docs/architectures.md). Outside that window the
        module is plain."""
        if self.b_enc.grad is not None:
            self.b_enc.addmv_(self.W_enc, self.b_dec)

    @torch.no_grad()
    def after_optimizer_step(self, out: ForwardOutput) -> None:
        """Put the decoder columns back on the unit sphere (and with ``centred``, b_enc back to the
        plain parametrisation: b_enc = c − W_enc b_dec with the stepped values)."""
        if self.centred and self.b_enc.grad is not None:
            self.b_enc.addmv_(self.W_enc, self.b_dec, alpha=-1)
        self.W_dec.div_(column_dots(self.W_dec, self.W_dec).sqrt_())
