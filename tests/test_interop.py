"""Import and export without the peer libraries: the hook-name mapping, our writers read back by
our readers (import -> export -> import is the identity), every bad input's one-line error, and the
import command end to end on the tiny model through evaluate, analyze, search and steer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from monosemantic.errors import UserError
from monosemantic.interop import detect_format, read_dictionary, saelens, sparsify
from monosemantic.interop import dictionary_learning as dl
from monosemantic.interop.base import ExportMeta
from monosemantic.interop.hooks import check_layer, layer_of_hook, module_hook, saelens_hook
from monosemantic.sae import SparseAutoencoder
from tests.helpers import cli, harvest_opts, random_sae

WRITERS = {"saelens": saelens, "sparsify": sparsify, "dictionary_learning": dl}


@pytest.mark.parametrize(
    ("hook", "layer"),
    [
        # GPT-2 through TransformerLens (SAELens's GPT-2 small suites) and through HF module names
        ("blocks.6.hook_resid_pre", 6),
        ("blocks.6.hook_resid_post", 7),
        ("transformer.h.6", 7),
        ("h.6", 7),
        # Pythia: TransformerLens names, HF's gpt_neox.layers, dictionary_learning's submodule names
        ("blocks.3.hook_resid_post", 4),
        ("gpt_neox.layers.3", 4),
        ("resid_post_layer_3", 4),
        ("resid_pre_layer_3", 3),
        # Llama / Gemma / Mistral: HF module paths (sparsify hookpoints), Gemma Scope / Llama Scope names
        ("layers.12", 13),
        ("model.layers.12", 13),
        ("model.language_model.layers.12", 13),
        ("blocks.20.hook_resid_post", 21),
    ],
)
def test_hook_names_map_to_our_layer(hook: str, layer: int) -> None:
    assert layer_of_hook(hook) == layer


@pytest.mark.parametrize(
    "hook", ["blocks.6.hook_mlp_out", "blocks.6.hook_resid_mid", "blocks.6.attn.hook_z", "layers.6.mlp", ""]
)
def test_hooks_off_the_residual_stream_are_refused(hook: str) -> None:
    with pytest.raises(UserError, match="residual stream"):
        layer_of_hook(hook)


def test_last_block_output_and_layer_zero_are_refused() -> None:
    assert check_layer(3, 4, "blocks.2.hook_resid_post") == 3
    with pytest.raises(UserError, match="4 blocks"):
        check_layer(layer_of_hook("blocks.3.hook_resid_post"), 4, "blocks.3.hook_resid_post")
    assert layer_of_hook(saelens_hook(5)) == 5 and layer_of_hook(module_hook(5)) == 5
    with pytest.raises(UserError, match="embeddings"):
        module_hook(0)


def same(a: SparseAutoencoder, b: SparseAutoencoder, x: torch.Tensor) -> None:
    fa, fb = a.encode(x)[1], b.encode(x)[1]
    torch.testing.assert_close(fa, fb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.decode(fa), b.decode(fb), rtol=1e-5, atol=1e-5)


CASES = [
    (fmt, arch)
    for fmt, archs in {
        "saelens": ("relu", "topk", "jumprelu", "batchtopk"),
        "sparsify": ("topk",),
        "dictionary_learning": ("relu", "topk", "batchtopk", "jumprelu"),
    }.items()
    for arch in archs
]


@pytest.mark.parametrize(("fmt", "arch"), CASES)
def test_export_then_import_is_the_identity(fmt: str, arch: str, tmp_path: Path) -> None:
    sae = random_sae(arch)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    meta = ExportMeta("x", "some/model", 3)
    WRITERS[fmt].write(sae, meta, tmp_path / "a")
    found, _ = detect_format(tmp_path / "a")
    assert found == fmt
    first = read_dictionary(tmp_path / "a")
    assert first.model == "some/model" and layer_of_hook(first.hook) == 3
    same(sae, first.sae, x)
    WRITERS[fmt].write(first.sae, meta, tmp_path / "b")
    same(sae, read_dictionary(tmp_path / "b", fmt).sae, x)


def test_what_a_format_cannot_hold_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="TopK dictionaries only"):
        sparsify.write(random_sae("relu"), ExportMeta("x", "m", 3), tmp_path)
    with pytest.raises(UserError, match="embeddings"):
        dl.write(random_sae("relu"), ExportMeta("x", "m", 0), tmp_path)


def saelens_folder(tmp_path: Path, **cfg_changes) -> Path:
    folder = tmp_path / "sl"
    saelens.write(random_sae("relu"), ExportMeta("x", "m", 2), folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.update(cfg_changes)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architecture": "gated"}, "'gated' has no equivalent"),
        ({"normalize_activations": "layer_norm"}, "rescales each token"),
        ({"normalize_activations": "constant_norm_rescale"}, "rescales each token"),
        ({"d_sae": 47}, "expected"),
    ],
)
def test_unrepresentable_saelens_settings_get_one_line(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as e:
        read_dictionary(saelens_folder(tmp_path, **change))
    assert "\n" not in str(e.value)


def test_saelens_conventions_fold_into_our_weights(tmp_path: Path) -> None:
    """apply_b_dec_to_input, an expected_average_only_in factor and rescale_acts_by_decoder_norm
    each give the activations SAELens's own formulas give."""
    g = torch.Generator().manual_seed(3)
    d, n, k, s = 16, 40, 5, 2.5
    W_enc, W_dec = torch.randn(d, n, generator=g), torch.randn(n, d, generator=g)
    b_enc, b_dec = torch.randn(n, generator=g), torch.randn(d, generator=g)
    folder = tmp_path / "sl"
    folder.mkdir()
    from safetensors.torch import save_file

    save_file(
        {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec},
        str(folder / "sae_weights.safetensors"),
    )
    cfg = {
        "d_in": d,
        "d_sae": n,
        "architecture": "topk",
        "k": k,
        "apply_b_dec_to_input": True,
        "rescale_acts_by_decoder_norm": True,
        "normalize_activations": "expected_average_only_in",
        "metadata": {"hook_name": "blocks.1.hook_resid_pre", "model_name": "m"},
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    (folder / "activation_scaler.json").write_text(json.dumps({"scaling_factor": s}))
    x = torch.randn(32, d, generator=g)
    hidden = ((s * x - b_dec) @ W_enc + b_enc) * W_dec.norm(dim=-1)  # SAELens TopKSAE.encode
    top = hidden.topk(k, dim=-1)
    feats = torch.zeros_like(hidden).scatter(-1, top.indices, top.values.relu())
    recon = ((feats / W_dec.norm(dim=-1)) @ W_dec + b_dec) / s  # decode, then undo the input scale
    ours = read_dictionary(folder).sae
    torch.testing.assert_close(ours.encode(x)[1], feats, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.decode(ours.encode(x)[1]), recon, rtol=1e-4, atol=1e-4)


def test_bad_folders_and_files_get_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a folder"):
        read_dictionary(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no dictionary"):
        read_dictionary(tmp_path / "empty")
    folder = saelens_folder(tmp_path)
    (folder / "sae_weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt"):
        read_dictionary(folder)
    (folder / "sae_weights.safetensors").unlink()
    with pytest.raises(UserError, match="is missing"):
        read_dictionary(folder, "saelens")
    dl.write(random_sae("topk"), ExportMeta("x", "m", 2), tmp_path / "dl")
    (tmp_path / "dl" / "ae.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt") as e:
        read_dictionary(tmp_path / "dl")
    assert "\n" not in str(e.value)
    cfg = json.loads((tmp_path / "dl" / "config.json").read_text())
    cfg["trainer"]["dict_class"] = "GatedAutoEncoder"
    (tmp_path / "dl" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="'GatedAutoEncoder' has no equivalent"):
        read_dictionary(tmp_path / "dl")


def test_import_runs_through_evaluate_analyze_search_and_exports_back(
    capsys, monkeypatch, tiny_llama_dir: Path, tiny_corpus: Path, tmp_path: Path
) -> None:
    source = tmp_path / "saelens-topk"
    saelens.write(random_sae("topk", d=32, n=64), ExportMeta("x", "no-such-org/no-such-model", 2), source)
    run = tmp_path / "run"
    code, err = cli(capsys, monkeypatch, "import", source, "--out", run, *harvest_opts(tiny_corpus))
    assert code == 2 and "pass --model" in err and err.count("\n") == 1
    assert not run.exists()  # a refused import leaves no empty run behind
    code, err = cli(
        capsys,
        monkeypatch,
        "import",
        source,
        "--out",
        run,
        "--model",
        tiny_llama_dir,
        *harvest_opts(tiny_corpus),
    )
    assert code == 0, err
    cfg = json.loads((run / "saes" / "topk-64" / "cfg.json").read_text())
    assert cfg["layer"] == 2 and cfg["imported_from"]["format"] == "saelens"
    code, err = cli(capsys, monkeypatch, "evaluate", run, "--loss-sequences", "4")
    assert code == 0, err
    metrics = json.loads((run / "saes" / "topk-64" / "metrics.json").read_text())
    assert 0 < metrics["l0"] <= 6 and "loss_recovered" in metrics
    code, err = cli(capsys, monkeypatch, "analyze", run, "--before", "6", "--after", "3")
    assert code == 0, err
    code, err = cli(capsys, monkeypatch, "search", run, "paris")
    assert code == 0, err
    steer = ["steer", run, "--feature", "1", "--scale", "5", "--prompt", "the code", "--max-new-tokens", "4"]
    code, err = cli(capsys, monkeypatch, *steer)
    assert code == 0, err
    # export to every format; each reads back as the same dictionary
    x = torch.randn(8, 32)
    ours = read_dictionary(source).sae
    for fmt in ("saelens", "sparsify", "dictionary_learning", "neuronpedia"):
        code, err = cli(capsys, monkeypatch, "export", run, "--format", fmt, "--to", tmp_path / fmt)
        assert code == 0, err
        if fmt != "neuronpedia":
            same(ours, read_dictionary(tmp_path / fmt).sae, x)
    np_dir = tmp_path / "neuronpedia" / "2-res-topk-64"
    features = [json.loads(line) for line in (np_dir / "features" / "batch-0.jsonl").read_text().splitlines()]
    assert len(features) == 64 and {"modelId", "layer", "index", "maxActApprox", "frac_nonzero"} <= set(
        features[0]
    )
    acts = [json.loads(line) for line in (np_dir / "activations" / "batch-0.jsonl").read_text().splitlines()]
    assert acts and len(acts[0]["tokens"]) == len(acts[0]["values"])
    assert acts[0]["values"][acts[0]["maxValueTokenIndex"]] == acts[0]["maxValue"]
    # a second import of the same name is refused; another width than the model's too
    code, err = cli(capsys, monkeypatch, "import", source, "--out", run, "--model", tiny_llama_dir)
    assert code == 2 and "already exists" in err
    wide = tmp_path / "wide"
    saelens.write(random_sae("relu", d=48), ExportMeta("x", str(tiny_llama_dir), 2), wide)
    code, err = cli(capsys, monkeypatch, "import", wide, "--out", run, *harvest_opts(tiny_corpus))
    assert code == 2 and "d_model 32" in err
    code, err = cli(capsys, monkeypatch, "export", run, "--sae", "nope")
    assert code == 2 and "no dictionary 'nope'" in err


def test_the_default_model_is_exported_under_its_hub_id(tmp_path: Path) -> None:
    from monosemantic.models import DEFAULT_HUB_ID, DEFAULT_MODEL, from_hub_id, hub_id

    assert hub_id(DEFAULT_MODEL) == DEFAULT_HUB_ID == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert from_hub_id(hub_id(DEFAULT_MODEL)) == DEFAULT_MODEL  # imported back: the embedded copy
    assert hub_id("/models/mine") == from_hub_id("/models/mine") == "/models/mine"
    saelens.write(random_sae("relu", d=8, n=16), ExportMeta("x", hub_id(DEFAULT_MODEL), 2), tmp_path / "s")
    assert read_dictionary(tmp_path / "s").model == DEFAULT_HUB_ID
