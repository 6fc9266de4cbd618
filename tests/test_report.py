"""The HTML report: built from a realistic run directory, from a harvest-only one, and safe with
HTML-special names."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from monosemantic.fsio import write_json, write_text
from monosemantic.report import L0_BOUND, VE_BOUND, build_report, dead_bound

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# (features, L0, variance explained, dead fraction, loss recovered): the smallest misses the L0
# and variance bounds, the others meet them; the largest has too many dead features.
SIZES = [(1024, 412.0, 0.58, 0.0, 0.71), (4096, 118.5, 0.72, 0.012, 0.83), (16384, 64.25, 0.79, 0.047, 0.88)]


def _write_manifest(run_dir: Path) -> None:
    write_json(
        run_dir / "activations" / "manifest.json",
        {
            "model": "SmolLM2-135M-Instruct",
            "layer": 15,
            "d_model": 576,
            "seq_len": 128,
            "n_tokens": 2_097_152,
            "scale": 0.0421,
            "harvest": {"tokens_per_s": 1350.0, "peak_rss_mb": 1380.5, "seconds": 1553.4},
            "shards": [
                {"file": "shard-00000.safetensors", "split": "train", "n_tokens": 1_048_576},
                {"file": "shard-00001.safetensors", "split": "eval", "n_tokens": 1_048_576},
            ],
        },
    )


def _write_sae(run_dir: Path, name: str, n: int, l0: float, ve: float, dead: float, rec: float) -> None:
    d = run_dir / "saes" / name
    write_json(
        d / "cfg.json",
        {"arch": "relu", "d_model": 576, "n_features": n, "l1_coeff": 5.0, "lr": 5e-5,
         "batch_size": 4096, "n_steps": 2000},
    )  # fmt: skip
    rows = []
    for k in range(20):
        step = 100 * (k + 1)
        decay = math.exp(-k / 5)
        rows.append(
            {"step": step, "tokens": step * 4096, "loss": 0.3 + 3.0 * decay, "mse": 0.2 + 2.0 * decay,
             "l1": 0.1 + decay, "l0": l0 * (1 + 9 * decay), "variance_explained": ve * (1 - decay),
             "lr": 5e-5, "l1_coeff": 5.0 * min(1.0, step / 100), "dead_fraction": dead * (1 + decay),
             "tokens_per_s": 90_000.0}
        )  # fmt: skip
    write_text(d / "log.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    edges = [-7.0 + 0.25 * i for i in range(29)]
    counts = [max(0, int(n / 12 * math.exp(-(((e + 3.0) / 1.1) ** 2)))) for e in edges[:-1]]
    write_json(
        d / "metrics.json",
        {"n_features": n, "l0": l0, "variance_explained": ve, "mse": 0.2 * (1 - ve), "dead_fraction": dead,
         "dense_fraction": 0.0009, "n_eval_tokens": 1_048_576,
         "density_histogram": {"bin_edges": edges, "counts": counts, "n_dead": round(dead * n)},
         "loss_clean": 3.112, "loss_spliced": 3.112 + (1 - rec) * 7.0, "loss_zero": 10.112,
         "loss_recovered": rec,
         "core": {"ce_loss_score": rec, "kl_div_score": 0.875, "explained_variance": ve, "cossim": 0.9,
                  "relative_reconstruction_bias": 0.96, "l0": l0, "l1": 12.5, "frac_alive": 1 - dead}},
    )  # fmt: skip


def _pngs(index: Path) -> list[Path]:
    page = index.read_text(encoding="utf-8")
    return [index.parent / src for src in re.findall(r'<img src="([^"]+\.png)"', page)]


def test_full_report(tmp_path: Path) -> None:
    run_dir = tmp_path / "demo"
    write_text(run_dir / "run.toml", '[harvest]\nmodel = "smollm2"\nlayer = 15\n')
    _write_manifest(run_dir)
    for i, size in enumerate(reversed(SIZES)):  # written out of order: the report sorts by size
        _write_sae(run_dir, f"sae-{i}", *size)

    index = build_report(run_dir)
    assert index == run_dir / "report" / "index.html"
    page = index.read_text(encoding="utf-8")

    pngs = _pngs(index)
    assert {p.name for p in pngs} == {
        "training.png",
        "density.png",
        "l0_vs_variance.png",
        "loss_recovered.png",
    }
    for png in pngs:
        data = png.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 10_000, png
    assert not list((run_dir / "report").glob("*.tmp")), "temporary files left behind"

    assert "SmolLM2-135M-Instruct" in page and "2,097,152" in page and "1,350 tokens/s" in page
    assert "L0 &lt; 300" in page and "65%" in page and "2% / 35% / 65%" in page
    positions = [page.index(f"<td>{n:,}</td>") for n, *_ in SIZES]
    assert positions == sorted(positions), "rows are not sorted by number of features"
    for n, l0, ve, dead, rec in SIZES:
        row = page[page.index(f"<td>{n:,}</td>") :].split("</tr>")[0]
        l0_mark, ve_mark = ("✓" if l0 < L0_BOUND else "✗"), ("✓" if ve >= VE_BOUND else "✗")
        dead_mark = "✓" if dead <= dead_bound(n) else "✗"
        assert f"{l0:.1f} {l0_mark}" in row
        assert f"{ve:.1%} {ve_mark}" in row
        assert f"{dead:.2%} {dead_mark}" in row
        assert f"{rec:.1%}" in row and "3.112" in row
    assert 'class="miss"' in page and 'class="ok"' in page
    assert "<details>" in page and "layer = 15" in page
    core = page[page.index("Core metrics (SAELens / SAEBench definitions)") :].split("</table>")[0]
    assert core.count("<tr>") == 1 + len(SIZES) and "0.875" in core and "0.960" in core


def test_report_before_training(tmp_path: Path) -> None:
    run_dir = tmp_path / "fresh"
    _write_manifest(run_dir)
    page = build_report(run_dir).read_text(encoding="utf-8")
    assert "Training has not run yet" in page
    assert "SmolLM2-135M-Instruct" in page
    assert _pngs(run_dir / "report" / "index.html") == []


def test_report_of_empty_run_dir(tmp_path: Path) -> None:
    page = build_report(tmp_path / "nothing").read_text(encoding="utf-8")
    assert "Harvest has not run yet" in page and "Training has not run yet" in page


def test_sae_trained_but_not_evaluated(tmp_path: Path) -> None:
    run_dir = tmp_path / "midway"
    _write_manifest(run_dir)
    _write_sae(run_dir, "done", *SIZES[0])
    (run_dir / "saes" / "done" / "metrics.json").unlink()
    page = build_report(run_dir).read_text(encoding="utf-8")
    assert "not evaluated yet" in page
    assert [p.name for p in _pngs(run_dir / "report" / "index.html")] == ["training.png"]


def test_html_special_characters_are_escaped(tmp_path: Path) -> None:
    run_dir = tmp_path / "<b>run&\"'"  # no "/" in file names, so no closing tags here
    write_text(run_dir / "run.toml", 'note = "</pre><script>alert(1)</script>"\n')
    _write_manifest(run_dir)
    _write_sae(run_dir, "<img src=x onerror=alert(1)>", *SIZES[1])
    page = build_report(run_dir).read_text(encoding="utf-8")
    assert "<script>" not in page and "<b>run" not in page and "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;b&gt;run&amp;&#34;&#39;" in page  # markupsafe's escapes of " and '
    assert "&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_the_two_dead_fractions_are_labelled(tmp_path: Path) -> None:
    """Issue 18, case 11: the training curve ended at "dead fraction 0.747" (a 998-token window)
    beside the table's 67.6% (never fired on the evaluation tokens), neither explained."""
    from monosemantic.report import _dead_title, load_saes, training_dead_window

    run_dir = tmp_path / "run"
    _write_manifest(run_dir)
    for i, size in enumerate(SIZES):
        _write_sae(run_dir, f"sae-{i}", *size)
    metrics = run_dir / "saes" / "sae-0" / "metrics.json"
    write_json(metrics, {**json.loads(metrics.read_text()), "n_density_tokens": 1_000_000})
    saes = load_saes(run_dir)
    # logged before the window was: rebuilt from cfg.json as train.dead_window does (5% of the run)
    assert [training_dead_window(s) for s in saes] == [409_600] * 3
    assert _dead_title(saes) == ("dead fraction: no firing in the last 409,600 training tokens", {})
    log = run_dir / "saes" / "sae-2" / "log.jsonl"
    rows = [{**json.loads(line), "dead_window": 998} for line in log.read_text().splitlines()]
    write_text(log, "".join(json.dumps(r) + "\n" for r in rows))
    title, suffix = _dead_title(load_saes(run_dir))
    assert "window (legend)" in title and suffix["sae-2"] == ", window 998 tokens"
    page = build_report(run_dir).read_text(encoding="utf-8")
    assert "dead (evaluation)" in page and "never fired on 1,000,000 tokens of the store" in page
    assert "short window of recent training tokens" in page


def test_loss_recovered_na_and_kl_in_the_table(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _write_manifest(run_dir)
    _write_sae(run_dir, "small", *SIZES[0])
    path = run_dir / "saes" / "small" / "metrics.json"
    why = "zero-ablation is not clearly worse than clean: CE_zero − CE_clean = -0.0130 nats < 0.0500"
    m = {**json.loads(path.read_text()), "loss_clean": 10.825, "loss_spliced": 10.827, "loss_zero": 10.812,
         "loss_recovered": None, "loss_recovered_na": why, "kl_spliced": 0.01234}  # fmt: skip
    write_json(path, m)
    page = build_report(run_dir).read_text(encoding="utf-8")
    row = page[page.index("<td>small</td>") :].split("</tr>")[0]
    assert "10.825" in row and "10.827" in row and "10.812" in row and "0.0123" in row
    escaped = why.replace("<", "&lt;")
    assert f'title="{escaped}">n/a</td>' in row and "116" not in row
    assert f"Loss recovered n/a: {escaped}" in page and "Undefined for this run" in page
    assert "loss_recovered.png" not in page
