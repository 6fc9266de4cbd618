"""Which features fire on a text: per token, and over the whole text (Neuronpedia's "search via
inference"). One forward pass up to the dictionary's layer, one encode.

An ``Inspector`` loads what it needs once (dictionary, each feature's maximum, token texts) so
that repeated calls (the web app's text box) cost only the forward pass; explanations are read
for the features shown.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from monosemantic.errors import UserError
from monosemantic.features import db
from monosemantic.features.search import MIN_FIRED
from monosemantic.features.tokens import decode_tokens
from monosemantic.models import LoadedModel, capture_residual
from monosemantic.sae import SparseAutoencoder


@dataclass(frozen=True)
class FeatureActivation:
    feature: int
    activation: float
    relative: float | None
    """activation / the feature's maximum in the analysis (None when it fired on fewer than
    ``MIN_FIRED`` analysed tokens)."""
    explanation: str | None


@dataclass(frozen=True)
class TokenFeatures:
    position: int
    """Position in the token ids read (the separator put before a text is position 0)."""
    token: str
    features: list[FeatureActivation]
    """The token's strongest features, largest activation first."""


@dataclass(frozen=True)
class TextFeature:
    feature: int
    max_activation: float
    relative: float
    """max_activation / the feature's maximum in the analysis (what the ranking uses)."""
    n_tokens: int
    """Tokens of the text it fires on."""
    peak: int
    """Position of its largest activation."""
    explanation: str | None


@dataclass(frozen=True)
class Inspection:
    sae: str
    tokens: list[TokenFeatures]
    top: list[TextFeature]
    """Features most active over the text relative to their maximum, strongest first."""
    seconds: float
    """Time of the forward pass and encode."""


class Inspector:
    """Reads texts through the model and one analysed dictionary of a run."""

    def __init__(
        self, con: sqlite3.Connection, sae_name: str, sae: SparseAutoencoder, lm: LoadedModel, layer: int
    ):
        stats = db.feature_stats(con, sae_name)
        if len(stats["max_act"]) != sae.n_features:
            raise UserError(f"{sae_name} is not analysed: run `monosemantic analyze RUN --sae {sae_name}`")
        self.con, self.name, self.sae, self.lm, self.layer = con, sae_name, sae, lm, layer
        # a feature that fired on a handful of analysed tokens has no meaningful maximum (often a
        # tiny activation of an almost dead feature): its share of max is not computed or ranked
        self.reliable = torch.as_tensor(stats["n_fired"]) >= MIN_FIRED
        self.max_act = torch.as_tensor(stats["max_act"], dtype=torch.float32).clamp(min=1e-12)
        self.words = db.vocab(con)

    def token_ids(self, text: str) -> list[int]:
        """A separator token, then the text's tokens, so that the text's first token is not the
        attention sink (as in the analysed corpus, where documents follow an end-of-text token)."""
        if not text.strip():
            raise UserError("the text is empty: give some text to inspect")
        tok = self.lm.tokenizer
        sep = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id
        return ([] if sep is None else [int(sep)]) + list(tok(text, add_special_tokens=False)["input_ids"])

    def inspect(self, text: str, *, per_token: int = 5, top: int = 20) -> Inspection:
        return self.inspect_ids(self.token_ids(text), per_token=per_token, top=top)

    @torch.no_grad()
    def activations(self, ids: list[int]) -> torch.Tensor:
        """(T, n) feature activations at every position of ``ids`` (position 0 included)."""
        resid = capture_residual(self.lm, self.layer, torch.tensor([ids]))[0]
        w = self.sae.W_enc
        return self.sae.encode(resid.to(device=w.device, dtype=w.dtype))[1].float().cpu()

    def inspect_ids(self, ids: list[int], *, per_token: int = 5, top: int = 20) -> Inspection:
        """Per-token top features and the text's top features, for token ids whose position 0
        is the attention sink (left out: the dictionary never saw it)."""
        if len(ids) < 2:
            raise UserError("the text is empty: give some text to inspect")
        t0 = time.perf_counter()
        feats = self.activations(ids)[1:]
        seconds = time.perf_counter() - t0
        vals, idx = feats.topk(min(per_token, feats.shape[1]), dim=1)
        peak_val, peak_pos = feats.max(0)
        rel = peak_val / self.max_act
        order = torch.where(self.reliable, rel, -1.0).argsort(descending=True)[:top]
        order = order[(peak_val[order] > 0) & self.reliable[order]]
        shown = set(idx[vals > 0].tolist()) | set(order.tolist())
        expl = self.explanations(sorted(shown))
        texts = decode_tokens([self.words[t] if t < len(self.words) else b"" for t in ids])
        tokens = [
            TokenFeatures(
                position=p + 1,
                token=texts[p + 1],
                features=[
                    FeatureActivation(j, v, self._relative(j, v), expl.get(j))
                    for v, j in zip(vals[p].tolist(), idx[p].tolist(), strict=True)
                    if v > 0
                ],
            )
            for p in range(len(feats))
        ]
        summary = [
            TextFeature(
                j,
                float(peak_val[j]),
                float(rel[j]),
                int((feats[:, j] > 0).sum()),
                int(peak_pos[j]) + 1,
                expl.get(j),
            )
            for j in order.tolist()
        ]
        return Inspection(self.name, tokens, summary, seconds)

    def _relative(self, feature: int, activation: float) -> float | None:
        return activation / float(self.max_act[feature]) if bool(self.reliable[feature]) else None

    def explanations(self, features: list[int]) -> dict[int, str]:
        if not features:
            return {}
        marks = ",".join("?" * len(features))
        rows = self.con.execute(
            f"SELECT id, explanation FROM features WHERE sae = ? AND id IN ({marks}) "
            "AND explanation IS NOT NULL",
            (self.name, *features),
        )
        return {int(r[0]): str(r[1]) for r in rows}


def open_inspector(run: Path, sae: str, lm: LoadedModel, con: sqlite3.Connection | None = None) -> Inspector:
    """An Inspector on the analysed dictionary ``sae`` of ``run`` ('' = the largest analysed);
    it keeps the database (or ``con``, e.g. a read-only connection) open for explanations
    (close ``inspector.con`` when done)."""
    from monosemantic.dictionary import load_dictionary

    con = db.open_db(run, readonly=True) if con is None else con
    try:
        name = db.pick_sae(con, run, sae)
        module, cfg = load_dictionary(run / "saes" / name)
        return Inspector(con, name, module, lm, int(cfg["layer"]))
    except BaseException:
        con.close()
        raise
