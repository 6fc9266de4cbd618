"""A catalog of safety-relevant features: for each small labelled probe set committed with the
project (``data/catalog.jsonl``: vulnerable vs safe code, biased vs neutral and deceptive vs honest
statements, texts with and without people, cities, non-English languages), the features that
separate its positive texts from its negative ones best.

Per feature and text we take the feature's largest activation over the text's tokens. For a set,

    auc   = P(activation on a random positive > on a random negative)
    score = max(0, 2·auc − 1) · max(0, mean positive − mean negative activation) / the feature's maximum

so a feature scores when it separates the texts (auc near 1) *and* fires on the positives with a
good part of its strength; the maximum comes from the analysis when there is one, else from the
probe texts themselves.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from monosemantic.corpus import clean_text
from monosemantic.errors import UserError
from monosemantic.models import LoadedModel, capture_residual
from monosemantic.sae import SparseAutoencoder

DEFAULT_PROBES = Path(__file__).resolve().parent.parent / "data" / "catalog.jsonl"


@dataclass(frozen=True)
class ProbeSet:
    name: str
    positives: list[str]
    negatives: list[str]


@dataclass(frozen=True)
class CatalogEntry:
    probe_set: str
    feature: int
    score: float
    auc: float


def load_probes(path: Path = DEFAULT_PROBES) -> list[ProbeSet]:
    """Probe sets from a .jsonl file of {"set": name, "label": 1 | 0, "text": ...} lines."""
    if not path.is_file():
        raise UserError(f"probe file {path} does not exist")
    sets: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    text, _ = clean_text(path.read_text(encoding="utf-8", errors="surrogateescape"))
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            sets[str(row["set"])][0 if int(row["label"]) else 1].append(clean_text(str(row["text"]))[0])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path}:{n} must be {{'set': ..., 'label': 0 or 1, 'text': ...}} ({e})") from e
    out = [ProbeSet(name, pos, neg) for name, (pos, neg) in sets.items()]
    for s in out:
        if not s.positives or not s.negatives:
            raise UserError(f"probe set {s.name!r} in {path} needs texts with label 1 and with label 0")
    return out


@torch.no_grad()
def text_maxima(lm: LoadedModel, layer: int, sae: SparseAutoencoder, texts: list[str]) -> Tensor:
    """(n_texts, n_features): each feature's largest activation over each text's tokens (after a
    separator token, so that no text token sits at the attention sink)."""
    tok = lm.tokenizer
    sep = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id
    rows = []
    for text in texts:
        ids = ([] if sep is None else [sep]) + tok(text, add_special_tokens=False)["input_ids"]
        resid = capture_residual(lm, layer, torch.tensor([ids]))[0, 1:].float()
        rows.append(sae.encode(resid.to(sae.W_enc.device))[1].amax(0).cpu())
    return torch.stack(rows)


def pairwise_auc(pos: Tensor, neg: Tensor) -> Tensor:
    """pos (P, n), neg (N, n) -> (n,) per-column AUC, ties counting half."""
    diff = pos.unsqueeze(1) - neg.unsqueeze(0)  # (P, N, n)
    return (diff > 0).float().mean((0, 1)) + 0.5 * (diff == 0).float().mean((0, 1))


def rank_set(pos: Tensor, neg: Tensor, max_act: Tensor, name: str, top: int) -> list[CatalogEntry]:
    auc = pairwise_auc(pos, neg)
    scale = torch.maximum(max_act, torch.cat([pos, neg]).amax(0)).clamp(min=1e-12)
    # both factors clipped at 0: a feature that prefers the negatives is not specific to the set
    score = (2 * auc - 1).clamp(min=0) * (pos.mean(0) - neg.mean(0)).clamp(min=0) / scale
    best = score.argsort(descending=True)[:top].tolist()
    return [CatalogEntry(name, j, float(score[j]), float(auc[j])) for j in best if score[j] > 0]


def build_catalog(
    lm: LoadedModel,
    layer: int,
    sae: SparseAutoencoder,
    probes: list[ProbeSet],
    max_act: Tensor,
    top: int = 10,
) -> list[CatalogEntry]:
    out = []
    for s in probes:
        acts = text_maxima(lm, layer, sae, s.positives + s.negatives)
        out += rank_set(acts[: len(s.positives)], acts[len(s.positives) :], max_act, s.name, top)
    return out
