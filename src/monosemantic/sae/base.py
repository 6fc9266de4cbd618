"""What every dictionary architecture shares: parameters, encode/decode, scale folding, and the
hooks the trainer calls. Subclasses define the activation function and the loss; all pure math.
A module may hold one slice of a dictionary's features (feature-parallel training): what crosses
features then goes through its ``collectives`` (``sae/collectives.py``).

    pre = W_enc x + b_enc         (..., n)
    f   = activation(pre)         (..., n), f ≥ 0 and sparse
    x̂   = W_dec f + b_dec         (..., d)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from monosemantic.sae.collectives import LOCAL, Collectives
from monosemantic.sae.sparse import Active

if TYPE_CHECKING:
    from typing import Self

    from monosemantic.config import TrainConfig


class ForwardOutput(NamedTuple):
    pre_acts: Tensor
    """(..., n) encoder pre-activations W_enc x + b_enc."""
    feats: Tensor
    """(..., n) feature activations f(x) ≥ 0."""
    recon: Tensor
    """(..., d) reconstruction x̂."""
    active: Active | None = None
    """The nonzero entries of feats (flattened to (B, n)) with their gradient, where the
    architecture selected them sparsely (TopK variants); None otherwise."""
    penalty: Tensor | None = None
    """() the sparsity penalty Σ_i f_i‖W_dec[:, i]‖ averaged over the batch, with its gradient, where
    the forward already computed it (ReLU's fast path, ``sae/relu_step.py``); None otherwise."""
    decoder_table: Tensor | None = None
    """(n, d) W_decᵀ made contiguous by the forward, in the autograd graph (TopK's fast path): the
    loss's further sparse decodes (AuxK, Matryoshka's prefixes) read it instead of copying W_dec
    again, and their gradients reach W_dec through one transposition; None otherwise."""


class LossContext(NamedTuple):
    """What the trainer knows and a loss may use, beside the batch."""

    sparsity_coeff: float
    """Current weight of the sparsity penalty (λ after its warm-up); unused by TopK variants."""
    dead: Tensor | None = None
    """(n,) bool: features that have not fired for the trainer's dead window (AuxK uses them)."""


class LossOutput(NamedTuple):
    loss: Tensor
    """() what the optimizer minimises."""
    mse: Tensor
    """() squared error summed over d, averaged over the batch."""
    sparsity: Tensor
    """() the architecture's sparsity term before its coefficient (0 where sparsity is structural)."""
    aux: Tensor
    """() auxiliary loss (AuxK for TopK variants; 0 otherwise)."""


def column_dots(a: Tensor, b: Tensor, rows: int = 64) -> Tensor:
    """Σ_j a[j, i] b[j, i] for a, b (d, n) -> (n,), over blocks of ``rows`` rows. A reduction over
    the first dimension of a row-major matrix is slow in torch (vecdot, (a * b).sum(0) and
    norm(dim=0) write or stride through a (d, n) temporary: 20-28 ms against 3 ms this way at
    576 x 16,384 on the 2-core CPU); the blocks stay in cache."""
    out = a.new_zeros(a.shape[1])
    for i in range(0, a.shape[0], rows):
        out += (a[i : i + rows] * b[i : i + rows]).sum(0)
    return out


def mse_loss(x: Tensor, recon: Tensor) -> Tensor:
    """‖x − x̂‖² summed over d, averaged over the batch: x, recon (B, d) -> ()."""
    return (recon - x).pow(2).sum(dim=-1).mean()


class SparseAutoencoder(nn.Module):
    arch: ClassVar[str] = ""
    feature_dims: ClassVar[dict[str, int | None]] = {"W_enc": 0, "b_enc": 0, "W_dec": 1, "b_dec": None}
    """The dimension along which each parameter and buffer runs over features, None where one
    value is shared by all features: feature-parallel training splits the former, copies the latter."""
    collectives: Collectives = LOCAL
    """What crosses features: local for a whole dictionary, over ranks for a slice of one
    (feature-parallel training sets it). An architecture does every sum, count, minimum or top-k
    over features through it, so that its own forward and loss also train a slice."""

    def __init__(self, d_model: int, n_features: int) -> None:
        super().__init__()
        self.d_model, self.n_features = d_model, n_features
        self.W_enc = nn.Parameter(torch.empty(n_features, d_model))
        self.b_enc = nn.Parameter(torch.zeros(n_features))
        self.W_dec = nn.Parameter(torch.empty(d_model, n_features))
        self.b_dec = nn.Parameter(torch.zeros(d_model))

    @classmethod
    def from_config(cls, d_model: int, n_features: int, cfg: TrainConfig) -> Self:
        """An untrained dictionary with the settings of ``cfg`` that this architecture reads."""
        return cls(d_model, n_features)

    def configure(self, cfg: TrainConfig) -> None:
        """Take the training settings of ``cfg`` that change how this module trains but not what it
        holds or saves (not hyperparameters; a feature shard gets them too)."""

    def hyperparameters(self) -> dict[str, Any]:
        """Constructor keywords beyond (d_model, n_features), saved in cfg.json to rebuild it."""
        return {}

    @torch.no_grad()
    def initialize(self, generator: torch.Generator, dec_norm: float = 0.1, enc_norm: float = 0.0) -> None:
        """Random decoder directions of norm ``dec_norm``, W_enc = W_decᵀ (rescaled to rows of norm
        ``enc_norm`` unless 0), zero biases."""
        w = torch.randn(self.d_model, self.n_features, generator=generator)
        w /= w.norm(dim=0, keepdim=True)
        self.W_dec.copy_(w * dec_norm)
        self.W_enc.copy_(w.T * (enc_norm or dec_norm))
        self.b_enc.zero_()
        self.b_dec.zero_()

    @torch.no_grad()
    def center_on(self, mean: Tensor) -> None:
        """Data-dependent part of the init: b_dec = ``mean`` (d,) of the data, and b_enc = −W_enc·mean,
        so that pre-activations start as W_enc (x − mean). Without it, the data mean (a large
        shared direction of the residual stream) dominates every pre-activation, and the few
        features aligned with it win every token: at 16,384 TopK latents on the demo, a quarter
        never fired."""
        self.b_dec.copy_(mean)
        self.b_enc.copy_(-(self.W_enc @ mean))

    def activation(self, pre: Tensor) -> Tensor:
        """pre (..., n) -> feats (..., n)."""
        raise NotImplementedError

    def loss(self, x: Tensor, out: ForwardOutput, ctx: LossContext) -> LossOutput:
        """The training loss for a batch x (B, d) and its forward output."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (..., d) -> (pre_acts, feats), each (..., n)."""
        # addmm adds the bias inside the matmul: one pass over (B, n) instead of two
        pre = torch.addmm(self.b_enc, x.reshape(-1, self.d_model), self.W_enc.T).view(*x.shape[:-1], -1)
        return pre, self.activation(pre)

    def decode(self, feats: Tensor) -> Tensor:
        """feats (..., n) -> x̂ (..., d)."""
        return self.collectives.sum(feats @ self.W_dec.T) + self.b_dec

    def forward(self, x: Tensor) -> ForwardOutput:
        pre, feats = self.encode(x)
        return ForwardOutput(pre, feats, self.decode(feats))

    def decoder_norms(self) -> Tensor:
        """(n,) ‖W_dec[:, i]‖₂."""
        return self.W_dec.norm(dim=0)

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make a dictionary trained on ``scale·x`` act on raw ``x`` with identical features:
        pre-activations are unchanged (W_enc·s) and x̂ = (W_dec f + b_dec) / s."""
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)

    def before_optimizer_step(self) -> None:
        """Called after backward, before the optimizer step (e.g. to project gradients)."""

    def after_optimizer_step(self, out: ForwardOutput) -> None:
        """Called after the optimizer step with the batch's forward output (e.g. to renormalise
        the decoder or update an inference threshold)."""

    @classmethod
    def trained_sizes(cls, sizes: list[int]) -> list[int]:
        """The dictionaries to train for ``--sizes``: one per size (a Matryoshka dictionary trains
        only the largest, whose prefixes are the others)."""
        return list(sizes)

    def views(self, sizes: list[int]) -> dict[int, SparseAutoencoder]:
        """The dictionaries this trained one yields, by size, to be saved as ``<arch>-<size>``:
        itself (a Matryoshka dictionary also yields its prefixes at each of ``sizes``)."""
        return {self.n_features: self}
