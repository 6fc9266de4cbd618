"""A small Python API over a run directory, for notebooks and scripts:

    import monosemantic
    run = monosemantic.open_run("runs/demo")
    run.dictionaries                      # ['relu-512', 'relu-2048', 'relu-16384']
    run.metrics("relu-2048")["core"]      # metrics.json (evaluate)
    run.feature(11, "relu-2048")          # statistics, explanation, top contexts (analyze)
    run.search("SQL injection")           # features specific to a concept
    run.encode("The Eiffel tower")        # feature activations per token
    run.steer("I went to", {13842: 1.0})  # the completion with feature 13842 clamped at 1x its max

Everything is read from what the stages wrote (docs/architecture.md); the model and dictionaries
load on first use and stay loaded. Errors are ``UserError`` with what to run to fix them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from monosemantic.errors import UserError
from monosemantic.fsio import read_json


class Feature(NamedTuple):
    """One analysed feature."""

    sae: str
    id: int
    stats: dict[str, Any]
    """its row of features.sqlite: n_fired, freq, max_act, mean_act, explanation, score_auc, ..."""
    top: list[Any]
    """its top-activating contexts (``features.db.Context``: tokens, acts, text), strongest first"""

    @property
    def explanation(self) -> str | None:
        return self.stats.get("explanation")


class Encoding(NamedTuple):
    """A text's feature activations at the dictionary's layer."""

    tokens: list[str]
    """the text's tokens as strings, one per row of ``feats``"""
    feats: Tensor
    """(n_tokens, n_features) activations (row 0 is the attention sink: the store leaves it out)"""

    def top(self, k: int = 10) -> list[tuple[int, float]]:
        """The ``k`` features with the largest activation anywhere past position 0: (id, value)."""
        peak = self.feats[1:].max(0).values if len(self.feats) > 1 else self.feats.max(0).values
        values, ids = peak.topk(min(k, len(peak)))
        return [(int(i), float(v)) for i, v in zip(ids, values, strict=True) if v > 0]


class Run:
    """A run directory (see ``open_run``)."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        self.path = Path(path)
        self.device = device
        if not (self.path / "saes").is_dir() and not (self.path / "run.toml").is_file():
            raise UserError(
                f"{self.path} is not a run directory (no run.toml or saes/): give the --out of a "
                "harvest, train or import"
            )
        self._saes: dict[str, Any] = {}
        self._targets: dict[str, Any] = {}
        self._lm: Any = None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, dictionaries={self.dictionaries})"

    @property
    def dictionaries(self) -> list[str]:
        """Names of the finished dictionaries, smallest first."""
        done = [d for d in (self.path / "saes").glob("*") if (d / "sae.safetensors").is_file()]
        return [d.name for d in sorted(done, key=lambda d: (read_json(d / "cfg.json")["n_features"], d.name))]

    def _name(self, sae: str | None) -> str:
        names = self.dictionaries
        if not names:
            raise UserError(
                f"{self.path} has no trained dictionary: run `monosemantic train --out {self.path}`"
            )
        if not sae:
            return names[-1]
        if sae not in names:
            raise UserError(f"{self.path} has no dictionary {sae!r}: choose one of {', '.join(names)}")
        return sae

    def dictionary(self, sae: str | None = None) -> Any:
        """The ``SparseAutoencoder`` ``sae`` (default: the largest), acting on raw activations:
        ``d.encode(x)[1]`` features, ``d(x).recon`` the reconstruction."""
        name = self._name(sae)
        if name not in self._saes:
            from monosemantic.stages.common import load_run_dictionary

            self._saes[name] = load_run_dictionary(self.path, name, self.device)
        return self._saes[name].sae

    def metrics(self, sae: str | None = None) -> dict[str, Any]:
        """The dictionary's metrics.json: our metrics, and SAELens's under "core" (docs/metrics.md)."""
        name = self._name(sae)
        path = self.path / "saes" / name / "metrics.json"
        if not path.is_file():
            raise UserError(f"{name} is not evaluated yet: run `monosemantic evaluate {self.path}`")
        return read_json(path)

    @property
    def model(self) -> Any:
        """The ``LoadedModel`` the run harvested from (loaded on first use)."""
        if self._lm is None:
            from monosemantic.stages.common import load_run_lm

            self._lm = load_run_lm(self.path, self.device)
        return self._lm

    def feature(self, feature: int, sae: str | None = None, top: int = 8) -> Feature:
        """An analysed feature's statistics, explanation and ``top`` strongest contexts."""
        from monosemantic.features import db

        name = self._name(sae)
        con = db.open_db(self.path, readonly=True)
        try:
            row = dict(db.feature_row(con, name, feature))
            contexts = db.contexts(con, name, feature, "top", db.vocab(con))[:top]
        finally:
            con.close()
        stats = {k: v for k, v in row.items() if k not in ("sae", "id", "histogram")}
        return Feature(name, feature, stats, contexts)

    def search(self, query: str, sae: str | None = None, top: int = 10) -> list[tuple[int, float]]:
        """Features that fire strongly and specifically on ``query``: (feature, score), best first."""
        from monosemantic.stages.features import run_search

        result = run_search(self.path, query, sae or "", top=top, lm=self.model)
        return [(h.feature, h.score) for h in result.hits]

    @torch.no_grad()
    def encode(self, text: str, sae: str | None = None) -> Encoding:
        """``text`` through the model to the dictionary's layer, then through the dictionary."""
        from monosemantic.models import capture_residual

        name = self._name(sae)
        d = self.dictionary(name)
        lm = self.model
        ids = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        if ids.shape[1] == 0:
            raise UserError("the text is empty after tokenization: give some words")
        layer = self._saes[name].layer
        acts = capture_residual(lm, layer, ids.to(lm.device))[0].float()
        feats = d.encode(acts.to(self.device))[1]
        return Encoding(lm.tokenizer.convert_ids_to_tokens(ids[0].tolist()), feats.cpu())

    def steer(
        self,
        prompt: str,
        features: dict[int, float],
        sae: str | None = None,
        mode: str = "clamp",
        **settings: Any,
    ) -> str:
        """``prompt`` continued with ``features`` (id -> scale, a multiple of the feature's maximum
        activation) clamped (``mode="add"``: added) at every position during generation, as the
        ``steer`` command does; returns the completion (the text after the prompt).

        ``settings``: fields of ``config.GenerateConfig`` (max_new_tokens, temperature, seed,
        keep_error, steer_prompt, chat). The model and the dictionary load once and stay loaded.

        Raises:
            UserError: the dictionary is not analysed (the scales need each feature's maximum),
                an unknown feature, mode or setting, an empty prompt.
        """
        from dataclasses import fields

        from monosemantic.config import GenerateConfig
        from monosemantic.stages.steer import SteerRequest, require_prompt
        from monosemantic.steer_eval import load_target, run_completions

        known = {f.name for f in fields(GenerateConfig)}
        if unknown := sorted(set(settings) - known):
            raise UserError(f"unknown steering setting {unknown[0]!r}: use one of {', '.join(sorted(known))}")
        cfg = GenerateConfig(**settings)
        request = SteerRequest(list(features), list(features.values()), mode)
        interventions = request.interventions()
        require_prompt(prompt)
        name = self._name(sae)
        if name not in self._targets:
            self._targets[name] = load_target(self.path, name, self.model)
        return str(run_completions(self._targets[name], [prompt], interventions, cfg)[0].text)


def open_run(path: str | Path, device: str = "cpu") -> Run:
    """A run directory written by ``monosemantic`` (harvest, train, import, ...), for notebooks.

    Raises:
        UserError: ``path`` is not a run directory.
    """
    return Run(path, device)
