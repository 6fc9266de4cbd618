"""Steered completions scored by the clean model: each completion's log-probability, the
watched features' activations when the clean model rereads it, and the probability mass on the
features' promoted tokens. ``complete`` generates (``monosemantic.steer``) and scores in one call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from monosemantic.models import LoadedModel, edit_residual
from monosemantic.sae import SparseAutoencoder
from monosemantic.steer import Edit, FeatureEdit, GenerateConfig, encode_prompts, generate


class Scores(NamedTuple):
    """What the clean model (no edit) makes of one completion; n = its length in tokens."""

    logprobs: Tensor
    """(n,) log p of each generated token given the text before it (nats)."""
    acts: Tensor
    """(n, k) activations of the watched features on the generated tokens, re-encoded."""
    promoted_logmass: Tensor
    """(n,) log Σ p(t) over the watched features' promoted tokens, at each position that
    predicts a generated token."""


def _recorder(into: list[Tensor]) -> Callable[[Tensor], Tensor]:
    """An identity edit that keeps what it sees."""

    def keep(x: Tensor) -> Tensor:
        into.append(x)
        return x

    return keep


@torch.no_grad()
def score(
    lm: LoadedModel,
    layer: int,
    sae: SparseAutoencoder,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    watch: Sequence[int],
    promoted: Sequence[int] = (),
    batch_size: int = 32,
) -> list[Scores]:
    """Read each prompt + completion with the clean model: one forward pass that also captures
    the residual at ``layer`` (right-padded batches; the padding comes after every real token)."""
    out: list[Scores] = []
    for i in range(0, len(prompts), batch_size):
        rows = [
            list(p) + list(c)
            for p, c in zip(prompts[i : i + batch_size], completions[i : i + batch_size], strict=True)
        ]
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, r in enumerate(rows):
            ids[j, : len(r)], mask[j, : len(r)] = torch.tensor(r), 1
        captured: list[Tensor] = []
        with edit_residual(lm, layer, _recorder(captured)):
            logits = lm.model(
                input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), use_cache=False
            ).logits
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        w = sae.W_dec
        feats = sae.encode(captured[0].to(device=w.device, dtype=w.dtype))[1][..., list(watch)].float().cpu()
        for j, (p, c) in enumerate(
            zip(prompts[i : i + batch_size], completions[i : i + batch_size], strict=True)
        ):
            a, n = len(p), len(c)
            pred = logp[j, a - 1 : a + n - 1]  # (n, vocab): predicts c[0..n-1]
            tok = pred.gather(1, torch.tensor(list(c), dtype=torch.long).view(-1, 1)).squeeze(1)
            mass = pred[:, list(promoted)].logsumexp(-1) if promoted else torch.full((n,), float("nan"))
            out.append(Scores(tok, feats[j, a : a + n], mass))
    return out


def promoted_tokens(
    lm: LoadedModel, sae: SparseAutoencoder, features: Sequence[int], k: int = 10
) -> list[int]:
    """The ``k`` tokens each feature's decoder direction promotes most (direct logit effect), all
    features together, without repeats."""
    from monosemantic.features.logits import top_logit_effects

    if not lm.is_causal or not features:
        return []
    effects = top_logit_effects(lm, sae.W_dec[:, list(features)].T.float(), k)
    return sorted({t for row in effects.promoted for t, _ in row})


@dataclass(frozen=True)
class Completion:
    """One generated completion and what the clean model makes of it."""

    prompt: str
    text: str
    token_ids: list[int]
    logprob: float
    """Σ log p of its tokens under the clean model (nats)."""
    fire_fraction: list[float]
    """Per watched feature: share of its tokens on which the feature fires (clean re-encode)."""
    max_relative: list[float]
    """Per watched feature: its largest activation over the completion / its maximum in the analysis."""
    promoted_logmass: float
    """Mean over its positions of log Σ p(promoted tokens) under the clean model (nan if none)."""

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def logprob_per_token(self) -> float:
        return self.logprob / max(1, self.n_tokens)

    @property
    def repetition(self) -> float:
        """``repetition(token_ids)``: the share of its 4-grams that repeat an earlier one."""
        return repetition(self.token_ids)


def repetition(ids: Sequence[int], n: int = 4) -> float:
    """seq-rep-n of a token sequence: 1 − distinct n-grams / n-grams (Welleck et al., 2019,
    "Neural text generation with unlikelihood training"); 0 for text that never repeats a
    4-gram, towards 1 for a loop ("UK, UK, UK, ..."); nan when it has fewer than ``n`` tokens.
    Greedy decoding of a small model repeats itself unsteered too, so compare with its value."""
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else float("nan")


def complete(
    lm: LoadedModel,
    layer: int,
    sae: SparseAutoencoder,
    max_act: Tensor,
    prompts: Sequence[str],
    edits: Sequence[Edit],
    cfg: GenerateConfig,
    *,
    watch: Sequence[int] = (),
    promoted: Sequence[int] = (),
    on_token: Callable[[int, int], None] | None = None,
) -> list[Completion]:
    """Generate a completion of each prompt with ``edits`` applied (none: the clean model), and
    score it with the clean model against the ``watch`` features (default: the edited ones) and
    the ``promoted`` token ids. ``max_act`` (n,): each feature's maximum in the analysis.
    ``on_token(prompt index, token id)``: each token as it is generated (``steer.generate``)."""
    watch = list(watch) or list(dict.fromkeys(e.feature for e in edits))
    ids = encode_prompts(lm, prompts, cfg.chat)
    edit = FeatureEdit(sae, edits, cfg.keep_error) if edits or not cfg.keep_error else None
    gen = generate(lm, layer, ids, edit, cfg, on_token=on_token)
    scores = score(lm, layer, sae, ids, gen, watch, promoted, cfg.batch_size)
    top = torch.as_tensor(max_act, dtype=torch.float32)[watch].clamp(min=1e-12)
    out = []
    for text, c, s in zip(prompts, gen, scores, strict=True):
        fires = (s.acts > 0).float().mean(0) if len(c) else torch.zeros(len(watch))
        rel = s.acts.amax(0) / top if len(c) else torch.zeros(len(watch))
        out.append(
            Completion(
                prompt=text,
                text=lm.tokenizer.decode(c, skip_special_tokens=False),
                token_ids=list(c),
                logprob=float(s.logprobs.sum()),
                fire_fraction=fires.tolist(),
                max_relative=rel.tolist(),
                promoted_logmass=float(s.promoted_logmass.mean()) if len(c) else float("nan"),
            )
        )
    return out
