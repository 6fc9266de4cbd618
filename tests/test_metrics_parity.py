"""Metric parity: the "core" block of metrics.json equals what SAELens's own evaluation code
(``sae_lens.evals.run_evals``) measures on the same dictionary, model and tokens.

SAELens drives a TransformerLens model; ``_HookedTiny`` gives it the tiny HF Llama through the
three calls run_evals makes (forward with per-token loss, forward with a hook, cached forward).
SAELens chooses the positions it scores by token identity (special tokens), ours by position
(position 0 and norm outliers): the adapter marks the positions we exclude by shifting their ids
past the vocabulary and undoes the shift before the model sees them, so that SAELens's
``exclude_special_tokens`` drops exactly those positions (docs/metrics.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from monosemantic.activations import ActivationStore
from monosemantic.interop import saelens
from monosemantic.interop.base import ExportMeta
from monosemantic.models import LoadedModel, capture_residual, edit_residual, load_model
from monosemantic.stages.common import load_run_dictionary
from tests.helpers import TRAIN, cli, harvest_args

LAYER = 2


class _HookedTiny:
    """The slice of TransformerLens's HookedRootModule that SAELens's evals call, over our model.
    Token ids ≥ ``vocab`` stand for id − vocab at a position SAELens must leave out."""

    def __init__(self, lm: LoadedModel, vocab: int) -> None:
        self.lm, self.vocab, self.tokenizer = lm, vocab, lm.tokenizer

    def _ids(self, tokens: Tensor) -> Tensor:
        return tokens % self.vocab

    def _both(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        ids = self._ids(tokens)
        logits = self.lm.model(input_ids=ids, use_cache=False).logits.float()
        lp = torch.log_softmax(logits[:, :-1], -1)
        return logits, -lp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T, V), (B, T-1)

    def __call__(self, tokens: Tensor, return_type: str, loss_per_token: bool, **_: Any) -> Any:
        assert return_type == "both" and loss_per_token
        return self._both(tokens)

    def run_with_hooks(self, tokens: Tensor, fwd_hooks: list[tuple[str, Callable]], **kw: Any) -> Any:
        ((name, hook),) = fwd_hooks
        assert name == f"blocks.{LAYER}.hook_resid_pre"
        with edit_residual(self.lm, LAYER, lambda h: hook(h, hook=None)):
            return self(tokens, **kw)

    def run_with_cache(self, tokens: Tensor, names_filter: list[str], **_: Any) -> Any:
        (name,) = names_filter
        return None, {name: capture_residual(self.lm, LAYER, self._ids(tokens))}


class _Tokens:
    """SAELens's ActivationsStore as run_evals uses it: every sequence in one batch."""

    def __init__(self, tokens: Tensor) -> None:
        self.tokens = tokens
        self.context_size = tokens.shape[1]
        self.store_batch_size_prompts = len(tokens)

    def get_batch_tokens(self, n: int) -> Tensor:
        assert n == len(self.tokens)
        return self.tokens

    def reset_input_dataset(self) -> None:
        pass


def test_core_metrics_equal_saelens_evals(
    capsys, monkeypatch, tiny_llama_dir: Path, tiny_corpus: Path, tmp_path: Path
) -> None:
    pytest.importorskip("sae_lens", reason="sae-lens (the core metrics' reference) is not installed")
    from sae_lens import SAE
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler

    run = tmp_path / "run"
    # float32 store: the stored activations are the model's own, bit for bit
    args = harvest_args(tiny_llama_dir, tiny_corpus, run, "--store-dtype", "float32")
    assert cli(capsys, monkeypatch, *args)[0] == 0
    for arch in ("relu", "topk"):
        k = ["--k", "4"] if arch == "topk" else []
        code, err = cli(capsys, monkeypatch, "train", "--out", run, *TRAIN, "--arch", arch, *k)
        assert code == 0, err
    store = ActivationStore(run)
    shards = store.shards("eval")
    tokens = torch.cat([store.load(s)[1] for s in shards]).long()
    assert all(store.load(s)[2].all() for s in shards), "the test assumes no outliers on the tiny model"
    code, err = cli(capsys, monkeypatch, "evaluate", run, "--loss-sequences", str(len(tokens)))
    assert code == 0, err

    lm = load_model(str(tiny_llama_dir))
    vocab = lm.model.config.vocab_size
    marked = tokens.clone()
    marked[:, 0] += vocab  # position 0: out of our metrics, so out of theirs
    model, source = _HookedTiny(lm, vocab), _Tokens(marked)
    ignore = list(range(vocab, 2 * vocab))
    for name in ("relu-64", "topk-64"):
        ours = json.loads((run / "saes" / name / "metrics.json").read_text())["core"]
        d = load_run_dictionary(run, name)
        saelens.write(d.sae, ExportMeta(name, str(tiny_llama_dir), LAYER), tmp_path / name)
        sae = SAE.load_from_disk(tmp_path / name)
        everything = EvalConfig(
            batch_size_prompts=len(tokens),
            n_eval_reconstruction_batches=1,
            compute_kl=True,
            compute_ce_loss=True,
            n_eval_sparsity_variance_batches=1,
            compute_l2_norms=True,
            compute_sparsity_metrics=True,
            compute_variance_metrics=True,
            compute_featurewise_density_statistics=True,
        )
        theirs, per_feature = run_evals(
            sae,
            source,
            model,
            ActivationScaler(),
            everything,
            exclude_special_tokens=ignore,  # type: ignore[arg-type]
        )
        flat = {k: v for group in theirs.values() for k, v in group.items()}
        for key in (
            "ce_loss_score",
            "ce_loss_with_sae",
            "ce_loss_without_sae",
            "ce_loss_with_ablation",
            "kl_div_score",
            "kl_div_with_sae",
            "kl_div_with_ablation",
            "explained_variance",
            "mse",
            "cossim",
            "l2_norm_in",
            "l2_norm_out",
            "l2_ratio",
            "relative_reconstruction_bias",
            "l0",
            "l1",
        ):
            assert ours[key] == pytest.approx(flat[key], rel=1e-4, abs=1e-6), (name, key)
        density = torch.tensor(per_feature["feature_density"], dtype=torch.float64)
        assert ours["frac_alive"] == pytest.approx((density > 0).double().mean().item())
        assert ours["freq_over_1_percent"] == pytest.approx((density > 0.01).double().mean().item())
        assert ours["n_tokens_sparsity_variance"] == tokens.numel() - len(tokens)
        assert ours["n_tokens_kl"] == tokens.numel() - len(tokens)
