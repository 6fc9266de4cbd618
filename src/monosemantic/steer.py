"""Steering: edit dictionary features in the residual stream while the model generates.

At the dictionary's layer, at every position of the prompt and of the generated text (the KV
cache holds the edited positions' keys and values, so each position is edited exactly once), the
residual x is replaced by

    x' = decode(f') + (x − decode(f))        f = encode(x), f' = f with the edits applied

as in *Scaling Monosemanticity* (Templeton et al., 2024, "Feature steering"): the features are
edited and the dictionary's error term x − decode(f) is kept, so that everything the dictionary
fails to reconstruct still reaches the later layers. Because the decoder is affine,
x' = x + Σ_i (f'_i − f_i) W_dec[:, i], which is how it is computed: with no edit, x' is x bit for
bit. With ``keep_error=False`` x' = decode(f') (the error term dropped, for comparison).

Edits: ``clamp`` sets f_i to a value (0 or negative ablates), ``add`` adds α·W_dec[:, i] whatever
f_i is (additive steering, as Neuronpedia offers). Both take their value as a multiple of the
feature's maximum activation in the analysis (``Intervention.scale``), so that ``scale 10`` means
what the paper's "10× max" means for every feature.

Each sequence's first token (the attention sink, never stored nor trained on: its residual norm is
~150× the others) and left padding are not edited.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from monosemantic.config import GenerateConfig
from monosemantic.errors import UserError
from monosemantic.models import LoadedModel, edit_residual
from monosemantic.sae import SparseAutoencoder

MODES = ("clamp", "add")


class Intervention(NamedTuple):
    """An edit as a user states it: a feature and a multiple of its maximum activation."""

    feature: int
    scale: float
    """clamp: f_i := scale · max_i; add: x += scale · max_i · W_dec[:, i]."""
    mode: str = "clamp"


class Edit(NamedTuple):
    """An edit in the dictionary's own units."""

    feature: int
    value: float
    """clamp: the activation f_i is set to; add: the coefficient α of W_dec[:, i]."""
    mode: str = "clamp"


def resolve(interventions: Sequence[Intervention], max_act: Tensor | Sequence[float]) -> list[Edit]:
    """Interventions (multiples of each feature's maximum activation ``max_act`` (n,)) -> Edits.

    Raises UserError for an unknown mode or feature id."""
    max_act = torch.as_tensor(max_act, dtype=torch.float64)
    edits = []
    for iv in interventions:
        if iv.mode not in MODES:
            raise UserError(f"unknown steering mode {iv.mode!r}: use one of {', '.join(MODES)}")
        if not 0 <= iv.feature < len(max_act):
            raise UserError(
                f"the dictionary has no feature {iv.feature}: ids run from 0 to {len(max_act) - 1}"
            )
        edits.append(Edit(iv.feature, float(iv.scale * max_act[iv.feature]), iv.mode))
    return edits


class FeatureEdit:
    """The residual rewrite for ``edit_residual``: x (B, T, d) -> x' (B, T, d).

    ``where`` (B, T) bool, set by the caller before each forward pass (generation knows which
    positions are padding or a sequence's first token), limits the edit; None edits everywhere.
    The dictionary's tensors stay where they are; x is cast to their device and dtype for the
    encode, and the result back to x's, so a bf16 or GPU model works with an fp32 CPU dictionary.
    """

    def __init__(self, sae: SparseAutoencoder, edits: Sequence[Edit], keep_error: bool = True) -> None:
        self.sae, self.edits, self.keep_error = sae, list(edits), keep_error
        self.ids = sorted({e.feature for e in edits})
        self.where: Tensor | None = None

    def edited_features(self, f: Tensor) -> Tensor:
        """f (..., n) -> the edited columns f'[..., ids] (..., k), edits applied in order."""
        col = {j: c for c, j in enumerate(self.ids)}
        cur = f[..., self.ids].clone()
        for e in self.edits:
            c = col[e.feature]
            cur[..., c] = e.value if e.mode == "clamp" else cur[..., c] + e.value
        return cur

    def __call__(self, x: Tensor) -> Tensor:
        if not self.edits and self.keep_error:
            return x
        w = self.sae.W_dec
        xs = x.to(device=w.device, dtype=w.dtype)
        _, f = self.sae.encode(xs)
        new_cols = self.edited_features(f)
        if self.keep_error:
            delta = new_cols - f[..., self.ids]
            for c, j in enumerate(self.ids):
                adds = [e.value for e in self.edits if e.feature == j and e.mode == "add"]
                if len(adds) == sum(e.feature == j for e in self.edits):  # adds only: exactly Σα
                    delta[..., c] = sum(adds)
            new = x + (delta @ w[:, self.ids].T).to(device=x.device, dtype=x.dtype)
        else:
            f = f.clone()
            f[..., self.ids] = new_cols
            new = self.sae.decode(f).to(device=x.device, dtype=x.dtype)
        if self.where is None:
            return new
        return torch.where(self.where.to(x.device).unsqueeze(-1), new, x)


def _separator(lm: LoadedModel) -> list[int]:
    """A token put before a plain prompt, so that its first token is not the attention sink (the
    stored corpus packs documents after an end-of-text token in the same way)."""
    tok = lm.tokenizer
    sep = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id
    return [] if sep is None else [int(sep)]


def encode_prompts(lm: LoadedModel, prompts: Sequence[str], chat: bool = False) -> list[list[int]]:
    """Token ids of each prompt: after a separator token, or in the chat template with ``chat``.

    Raises UserError for an empty prompt or a tokenizer without a chat template."""
    tok = lm.tokenizer
    out = []
    for p in prompts:
        if not p.strip():
            raise UserError("the prompt is empty: give some text to continue, e.g. --prompt 'I think'")
        if chat:
            if not getattr(tok, "chat_template", None):
                raise UserError(f"{lm.name}'s tokenizer has no chat template: leave out --chat")
            text = tok.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            out.append(list(tok(text, add_special_tokens=False)["input_ids"]))
        else:
            out.append(_separator(lm) + list(tok(p, add_special_tokens=False)["input_ids"]))
    return out


def _left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[Tensor, Tensor]:
    """(B, T) ids left-padded with ``pad``, and the (B, T) attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(list(r))
            mask[i, width - len(r) :] = 1
    return ids, mask


def _stop_ids(lm: LoadedModel) -> set[int]:
    tok = lm.tokenizer
    extra = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    extra = extra if isinstance(extra, list) else [extra]
    return {int(t) for t in [tok.eos_token_id, *extra] if t is not None}


@torch.no_grad()
def generate(
    lm: LoadedModel,
    layer: int,
    prompts: Sequence[Sequence[int]],
    edit: FeatureEdit | None,
    cfg: GenerateConfig,
    *,
    use_cache: bool = True,
    on_token: Callable[[int, int], None] | None = None,
) -> list[list[int]]:
    """Generate up to ``cfg.max_new_tokens`` after each prompt (token ids), with ``edit`` applied
    at ``layer`` (None: the clean model). Returns each completion's ids, the stop token excluded.

    The batch is left-padded, with position ids counted from each row's first real token, so a
    row generates what it would alone (up to float rounding). With ``use_cache=False`` every step
    reruns the whole sequence (the reference the cached path is tested against).

    ``on_token(i, token_id)``, when given, is called as soon as prompt ``i`` gets a token (the
    stop token and what follows it excepted), in order: what the web app streams. It sees exactly
    the returned ids; an exception it raises stops the generation (a client that went away)."""
    if not lm.is_causal:
        raise UserError(f"{lm.name} is not a causal language model: it cannot generate text")
    out: list[list[int]] = []
    for i in range(0, len(prompts), cfg.batch_size):
        report = None if on_token is None else _offset(on_token, i)
        out += _generate_batch(lm, layer, prompts[i : i + cfg.batch_size], edit, cfg, use_cache, report)
    return out


def _offset(on_token: Callable[[int, int], None], start: int) -> Callable[[int, int], None]:
    """``on_token`` for a batch whose first row is prompt ``start``."""
    return lambda row, token: on_token(start + row, token)


def _generate_batch(
    lm: LoadedModel,
    layer: int,
    prompts: Sequence[Sequence[int]],
    edit: FeatureEdit | None,
    cfg: GenerateConfig,
    use_cache: bool,
    on_token: Callable[[int, int], None] | None = None,
) -> list[list[int]]:
    stop = _stop_ids(lm)
    pad = min(stop) if stop else 0
    ids, mask = _left_pad(prompts, pad)
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    gen = torch.Generator(device=lm.device).manual_seed(cfg.seed)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=lm.device)
    new: list[Tensor] = []
    cache = None
    # transformers 5 renamed past_key_values to cache (the old name warns, then goes in 5.40)
    cache_arg = "cache" if "cache" in inspect.signature(lm.model.forward).parameters else "past_key_values"
    hooked = edit_residual(lm, layer, edit) if edit is not None else contextlib.nullcontext()
    try:
        with hooked:
            for _ in range(cfg.max_new_tokens):
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                n_in = 1 if cache is not None else ids.shape[1]
                if edit is not None:  # not the padding, not each row's first token
                    edit.where = (mask.bool() & (pos > 0))[:, -n_in:]
                    if cache is None and not cfg.steer_prompt:
                        edit.where[:, :-1] = False
                res = lm.model(
                    input_ids=ids[:, -n_in:],
                    attention_mask=mask,
                    position_ids=pos[:, -n_in:],
                    use_cache=use_cache,
                    **{cache_arg: cache},
                )
                if use_cache:
                    cache = res["cache"] if "cache" in res else res["past_key_values"]
                logits = res.logits[:, -1].float()
                if cfg.temperature > 0:
                    probs = torch.softmax(logits / cfg.temperature, dim=-1)
                    token = torch.multinomial(probs, 1, generator=gen).squeeze(1)
                else:
                    token = logits.argmax(-1)
                token = torch.where(done, torch.full_like(token, pad), token)
                new.append(token)
                done |= torch.isin(token, torch.tensor(sorted(stop), device=token.device, dtype=token.dtype))
                if on_token is not None:
                    for row in (~done).nonzero().flatten().tolist():
                        on_token(row, int(token[row]))
                ids = torch.cat([ids, token[:, None]], dim=1)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                if bool(done.all()):
                    break
    finally:
        if edit is not None:
            edit.where = None
    rows = torch.stack(new, dim=1).tolist() if new else [[] for _ in prompts]
    return [r[: next((k for k, t in enumerate(r) if t in stop), len(r))] for r in rows]
