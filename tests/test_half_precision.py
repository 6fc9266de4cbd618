"""The whole pipeline on a float16 and a bfloat16 model: every place where a dictionary's float32
tensors meet the model's weights or activations (harvest, train, evaluate's splice, analyze's
logit effects, search, catalog-style captures) works, and agrees with the float32 model."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from monosemantic.dictionary import load_dictionary
from monosemantic.features.logits import direct_logit_effects
from monosemantic.models import capture_residual, edit_residual, load_model, to_model
from tests.helpers import cli, harvest_args


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_pipeline_in_half_precision(
    capsys, monkeypatch, tiny_llama_dir, tiny_corpus, tmp_path, dtype
) -> None:
    """Issue 18, case 3: `harvest --dtype bfloat16`, train, analyze died in the logit effects
    ("expected m1 and m2 to have the same dtype")."""
    out = tmp_path / "run"
    code, err = cli(capsys, monkeypatch, *harvest_args(tiny_llama_dir, tiny_corpus, out, "--dtype", dtype))
    assert code == 0, err
    train = ["--sizes", "64", "--train-batch-size", "256", "--epochs", "2"]
    assert cli(capsys, monkeypatch, "train", "--out", out, *train)[0] == 0
    log = [json.loads(line) for line in (out / "saes" / "relu-64" / "log.jsonl").read_text().splitlines()]
    assert all(r["dead_window"] > 0 for r in log if "dead_fraction" in r)  # what the report labels
    code, err = cli(capsys, monkeypatch, "evaluate", out, "--loss-sequences", "8")
    assert code == 0, err
    m = json.loads((out / "saes" / "relu-64" / "metrics.json").read_text())
    assert all(isinstance(m[k], float) for k in ("loss_clean", "loss_spliced", "loss_zero", "kl_spliced"))
    code, err = cli(capsys, monkeypatch, "analyze", out, "--before", "6", "--after", "3")
    assert code == 0, err
    con = sqlite3.connect(out / "features.sqlite")
    promoted = [json.loads(p) for (p,) in con.execute("SELECT promoted FROM features WHERE sae = 'relu-64'")]
    stats = json.loads(con.execute("SELECT stats FROM analyses WHERE sae = 'relu-64'").fetchone()[0])
    con.close()
    assert all(p and len(p) == 10 for p in promoted) and "logit_effects_skipped" not in stats
    code, err = cli(capsys, monkeypatch, "analyze", out, "--corpus", str(tiny_corpus), "--tokens", "600",
                    "--before", "6", "--after", "3", "--force")  # fmt: skip
    assert code == 0, err  # the model-forward path: captures in the half dtype
    code, err = cli(capsys, monkeypatch, "search", out, "paris", "--sae", "relu-64")
    assert code == 0, err
    probes = tmp_path / "probes.jsonl"
    rows = [(1, "the code of paris is"), (1, "paris was"), (0, "the a of"), (0, "select sql where")]
    probes.write_text("\n".join(json.dumps({"set": "paris", "label": y, "text": t}) for y, t in rows))
    code, err = cli(capsys, monkeypatch, "catalog", out, "--sae", "relu-64", "--probes", probes)
    assert code == 0, err

    # the same dictionary on the float32 model: logit effects and splice agree to the half precision
    half, full = load_model(str(tiny_llama_dir), dtype=dtype), load_model(str(tiny_llama_dir))
    assert half.dtype == getattr(torch, dtype)
    sae, _ = load_dictionary(out / "saes" / "relu-64")
    directions = sae.W_dec.T.detach()
    torch.testing.assert_close(
        direct_logit_effects(half, directions), direct_logit_effects(full, directions), rtol=0.05, atol=0.05
    )
    ids = torch.randint(2, 30, (2, 16))
    for lm in (half, full):
        resid = capture_residual(lm, 2, ids)
        assert resid.dtype == lm.dtype
        feats = sae.encode(resid.float())[1]  # dictionaries compute in float32
        assert to_model(lm, sae.decode(feats)).dtype == lm.dtype
        with edit_residual(lm, 2, lambda h: sae(h.float()).recon), torch.no_grad():
            logits = lm.model(input_ids=ids).logits
        assert torch.isfinite(logits).all()
