"""Round trips against the real libraries (the formats' definitions): our exports loaded by
SAELens, sparsify and dictionary_learning encode and decode as we do; dictionaries trained with
SAELens and sparsify import with equal activations and run through evaluate, analyze and search.

The peers are not project dependencies; CI installs them (docs/interop.md gives the commands).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from monosemantic.interop import dictionary_learning as dl
from monosemantic.interop import read_dictionary, saelens, sparsify
from monosemantic.interop.base import ExportMeta
from monosemantic.models import capture_residual, load_model
from tests.helpers import cli, harvest_opts, random_sae

X = torch.randn(64, 16, generator=torch.Generator().manual_seed(5))
TOL = {"rtol": 1e-4, "atol": 1e-4}


def runs_through_the_pipeline(capsys, monkeypatch, run: Path) -> None:
    """An imported run goes through evaluate, analyze, search and steer."""
    for args in (
        ["evaluate", run, "--loss-sequences", "4"],
        ["analyze", run, "--before", "6", "--after", "3"],
    ):
        code, err = cli(capsys, monkeypatch, *args)
        assert code == 0, err
    assert cli(capsys, monkeypatch, "search", run, "paris")[0] == 0
    steer = ["steer", run, "--feature", "1", "--scale", "5", "--prompt", "the code", "--max-new-tokens", "4"]
    code, err = cli(capsys, monkeypatch, *steer)
    assert code == 0, err


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu", "batchtopk"])
def test_saelens_loads_our_export(arch: str, tmp_path: Path) -> None:
    sl = pytest.importorskip("sae_lens", reason="sae-lens (the SAELens format's oracle) is not installed")
    ours = random_sae(arch)
    saelens.write(ours, ExportMeta("x", "m", 3), tmp_path)
    theirs = sl.SAE.load_from_disk(tmp_path)
    feats = theirs.encode(X)
    torch.testing.assert_close(feats, ours.encode(X)[1], **TOL)
    torch.testing.assert_close(theirs.decode(feats), ours.decode(ours.encode(X)[1]), **TOL)
    assert theirs.cfg.metadata.hook_name == "blocks.3.hook_resid_pre"


def test_sparsify_loads_our_export(tmp_path: Path) -> None:
    sp = pytest.importorskip(
        "sparsify", reason="eai-sparsify (the sparsify format's oracle) is not installed"
    )
    ours = random_sae("topk")
    sparsify.write(ours, ExportMeta("x", "m", 3), tmp_path)
    theirs = sp.SparseCoder.load_from_disk(tmp_path / "layers.2")
    enc = theirs.encode(X)
    dense = torch.zeros(len(X), ours.n_features).scatter(-1, enc.top_indices, enc.top_acts)
    torch.testing.assert_close(dense, ours.encode(X)[1], **TOL)
    torch.testing.assert_close(theirs.decode(enc.top_acts, enc.top_indices), ours(X).recon, **TOL)


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu", "batchtopk"])
def test_dictionary_learning_loads_our_export(arch: str, tmp_path: Path) -> None:
    pytest.importorskip(
        "dictionary_learning", reason="dictionary-learning (its format's oracle) is not installed"
    )
    from dictionary_learning.utils import load_dictionary

    ours = random_sae(arch)
    dl.write(ours, ExportMeta("x", "m", 3), tmp_path)
    theirs, config = load_dictionary(str(tmp_path), "cpu")
    feats = theirs.encode(X)
    expected = ours.encode(X)[1]
    if arch == "relu":  # their loader renormalises the decoder, which scales each feature by its norm
        expected = expected * ours.W_dec.norm(dim=0)
    torch.testing.assert_close(feats, expected, **TOL)
    torch.testing.assert_close(theirs.decode(feats), ours.decode(ours.encode(X)[1]), **TOL)
    assert config["trainer"]["layer"] == 2


def tiny_acts(model_dir: Path, layer: int) -> torch.Tensor:
    """Residual activations of the tiny Llama at ``layer`` over a few random sequences."""
    lm = load_model(str(model_dir))
    ids = torch.randint(2, 37, (16, 16), generator=torch.Generator().manual_seed(0))
    return capture_residual(lm, layer, ids)[:, 1:].reshape(-1, lm.d_model)


def test_a_saelens_trained_sae_imports_and_runs_through_the_pipeline(
    capsys, monkeypatch, tiny_llama_dir: Path, tiny_corpus: Path, tmp_path: Path
) -> None:
    sl = pytest.importorskip("sae_lens", reason="sae-lens (the SAELens format's oracle) is not installed")
    from sae_lens.saes.sae import TrainStepInput

    acts = tiny_acts(tiny_llama_dir, 2)
    cfg = sl.TopKTrainingSAEConfig(d_in=32, d_sae=64, k=4, apply_b_dec_to_input=True)
    cfg.metadata.hook_name, cfg.metadata.model_name = "blocks.2.hook_resid_pre", str(tiny_llama_dir)
    sae = sl.TopKTrainingSAE(cfg)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for step in range(30):
        out = sae.training_forward_pass(TrainStepInput(acts, {}, None, step, False))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    sae.save_inference_model(tmp_path / "sl")
    theirs = sl.SAE.load_from_disk(tmp_path / "sl")
    ours = read_dictionary(tmp_path / "sl").sae
    torch.testing.assert_close(ours.encode(acts)[1], theirs.encode(acts), **TOL)
    torch.testing.assert_close(ours(acts).recon, theirs.decode(theirs.encode(acts)), **TOL)
    run = tmp_path / "run"
    assert (
        cli(capsys, monkeypatch, "import", tmp_path / "sl", "--out", run, *harvest_opts(tiny_corpus))[0] == 0
    )
    assert json.loads((run / "saes" / "topk-64" / "cfg.json").read_text())["layer"] == 2
    runs_through_the_pipeline(capsys, monkeypatch, run)


def test_a_sparsify_trained_sae_imports_with_equal_activations(
    capsys, monkeypatch, tiny_llama_dir: Path, tiny_corpus: Path, tmp_path: Path
) -> None:
    sp = pytest.importorskip(
        "sparsify", reason="eai-sparsify (the sparsify format's oracle) is not installed"
    )
    acts = tiny_acts(tiny_llama_dir, 3)  # the output of block 2: sparsify's hookpoint layers.2
    sae = sp.SparseCoder(32, sp.SparseCoderConfig(num_latents=64, k=4))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(30):
        loss = sae(acts).fvu
        opt.zero_grad()
        loss.backward()
        opt.step()
    sae.save_to_disk(tmp_path / "sp" / "layers.2")
    (tmp_path / "sp" / "config.json").write_text(json.dumps({"model": str(tiny_llama_dir)}))
    foreign = read_dictionary(tmp_path / "sp")
    assert foreign.hook == "layers.2" and foreign.model == str(tiny_llama_dir)
    enc = sae.encode(acts)
    dense = torch.zeros(len(acts), 64).scatter(-1, enc.top_indices, enc.top_acts)
    torch.testing.assert_close(foreign.sae.encode(acts)[1], dense.detach(), **TOL)
    torch.testing.assert_close(
        foreign.sae(acts).recon, sae.decode(enc.top_acts, enc.top_indices).detach(), **TOL
    )
    run = tmp_path / "run"
    code, err = cli(capsys, monkeypatch, "import", tmp_path / "sp", "--out", run, *harvest_opts(tiny_corpus))
    assert code == 0, err
    assert json.loads((run / "saes" / "topk-64" / "cfg.json").read_text())["layer"] == 3
    runs_through_the_pipeline(capsys, monkeypatch, run)
