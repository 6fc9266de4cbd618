"""Steering and inspect on a tiny analysed run: the edit hook's algebra, generation with and
without the KV cache, the measured effect, agreement of inspect with analyze, and bad input."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from monosemantic.config import GenerateConfig, HarvestConfig, TrainConfig
from monosemantic.dictionary import load_dictionary
from monosemantic.features import db
from monosemantic.models import LoadedModel, edit_residual, load_model
from monosemantic.sae import SparseAutoencoder
from monosemantic.stages.pipeline import run_harvest, run_train
from monosemantic.steer import Edit, FeatureEdit, encode_prompts, generate
from tests.helpers import cli, one_line_error, plant_feature

LAYER = 2
PROMPTS = ["the code of paris is", "sql select", "a buffer overflow in the shell was"]


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, tiny_corpus: Path) -> Path:
    out = tmp_path_factory.mktemp("steer") / "run"
    hcfg = HarvestConfig(
        model=str(tiny_llama_dir),
        corpus=str(tiny_corpus),
        seq_len=16,
        layer=LAYER,
        n_tokens=3000,
        n_eval_tokens=600,
        shard_tokens=600,
    )
    run_harvest(hcfg, out, False)
    run_train(TrainConfig(sizes=[16, 64], batch_size=256, epochs=2), out, False)
    from monosemantic.config import AnalyzeConfig
    from monosemantic.features.analyze import analyze

    analyze(out, AnalyzeConfig(sae="relu-64", before=6, after=3), load_model(str(tiny_llama_dir)))
    return out


@pytest.fixture
def run(analysed: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(analysed, out)
    return out


@pytest.fixture(scope="module")
def lm(tiny_llama_dir: Path) -> LoadedModel:
    return load_model(str(tiny_llama_dir))


@pytest.fixture(scope="module")
def sae(analysed: Path) -> SparseAutoencoder:
    return load_dictionary(analysed / "saes" / "relu-64")[0]


def cli_out(capsys, monkeypatch, *args) -> tuple[int, str, str]:
    """Run the CLI; (exit code, stdout, stderr)."""
    import sys

    from monosemantic.cli import main

    monkeypatch.setattr(sys, "argv", ["monosemantic", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = int(e.code or 0)
    got = capsys.readouterr()
    return code, got.out, got.err


def _logits(lm: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    return lm.model(input_ids=ids, use_cache=False).logits


def _live_feature(lm: LoadedModel, sae: SparseAutoencoder) -> int:
    """A feature that fires somewhere on the test prompts (so that clamping it changes something)."""
    ids = torch.tensor([encode_prompts(lm, PROMPTS[:1])[0]])
    from monosemantic.models import capture_residual

    f = sae.encode(capture_residual(lm, LAYER, ids))[1][0, 1:]
    return int((f > 0).sum(0).argmax())


@torch.no_grad()
def test_no_edit_leaves_the_logits_unchanged(lm: LoadedModel, sae: SparseAutoencoder) -> None:
    ids = torch.tensor([encode_prompts(lm, PROMPTS[:1])[0]])
    clean = _logits(lm, ids)
    for edit in (FeatureEdit(sae, []), FeatureEdit(sae, [Edit(3, 0.0, "add")])):
        with edit_residual(lm, LAYER, edit):
            assert torch.equal(_logits(lm, ids), clean)  # error term kept: x' = x exactly
    clamp = FeatureEdit(sae, [Edit(3, 5.0)])
    clamp.where = torch.zeros(ids.shape, dtype=torch.bool)
    with edit_residual(lm, LAYER, clamp):
        assert torch.equal(_logits(lm, ids), clean)  # nowhere to edit
    # with the error term dropped and no edit, the model reads the dictionary's reconstruction
    with edit_residual(lm, LAYER, FeatureEdit(sae, [], keep_error=False)):
        dropped = _logits(lm, ids)
    with edit_residual(lm, LAYER, lambda x: sae(x).recon):
        torch.testing.assert_close(dropped, _logits(lm, ids))
    assert not torch.allclose(dropped, clean)


class Recording(FeatureEdit):
    """A FeatureEdit that keeps (x, x', where) of every call."""

    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        new = super().__call__(x)
        self.calls.append((x.clone(), new.clone(), None if self.where is None else self.where.clone()))
        return new


@torch.no_grad()
@pytest.mark.parametrize("keep_error", [True, False])
def test_clamp_sets_the_feature_at_every_position_with_the_cache(
    lm: LoadedModel, sae: SparseAutoencoder, keep_error: bool
) -> None:
    j, value, n_new = _live_feature(lm, sae), 7.5, 6
    edit = Recording(sae, [Edit(j, value)], keep_error=keep_error)
    edit.calls = []
    prompts = encode_prompts(lm, PROMPTS)
    cfg = GenerateConfig(max_new_tokens=n_new)
    out = generate(lm, LAYER, prompts, edit, cfg)
    assert len(edit.calls) == n_new and edit.calls[0][0].shape[1] == max(map(len, prompts))
    assert all(x.shape[1] == 1 for x, _, _ in edit.calls[1:])  # the KV cache: one new position per step
    w = sae.W_dec[:, j]
    n_edited = torch.zeros(len(prompts), dtype=torch.long)
    for x, new, where in edit.calls:
        assert where is not None
        n_edited += where.sum(1)
        assert torch.equal(new[~where], x[~where])  # padding and each row's first token untouched
        xs, ns = x[where], new[where]
        if keep_error:
            # x' = x + (v - f_j) w_j: decode(f') + (x - decode(f)) with f'_j = v, nothing else moved
            f = sae.encode(xs)[1][:, j]
            step = (ns - xs) @ w / (w @ w)
            torch.testing.assert_close(f + step, torch.full_like(f, value), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(ns - xs, step[:, None] * w, rtol=1e-4, atol=1e-5)
        else:
            f = sae.encode(xs)[1]
            f[:, j] = value
            torch.testing.assert_close(ns, sae.decode(f))
    # every position of every prompt but its first token, then every generated token fed back (a
    # row that has stopped is fed padding until the batch ends; its output ignores it)
    lengths = torch.tensor([len(p) for p in prompts])
    assert n_edited.tolist() == (lengths - 1 + len(edit.calls) - 1).tolist()
    assert max(map(len, out)) == len(edit.calls)


@torch.no_grad()
def test_add_mode_equals_adding_the_decoder_direction(lm: LoadedModel, sae: SparseAutoencoder) -> None:
    ids = torch.tensor([encode_prompts(lm, PROMPTS[:1])[0]])
    j, alpha = 5, 3.0
    with edit_residual(lm, LAYER, FeatureEdit(sae, [Edit(j, alpha, "add")])):
        added = _logits(lm, ids)
    with edit_residual(lm, LAYER, lambda x: x + alpha * sae.W_dec[:, j]):
        torch.testing.assert_close(added, _logits(lm, ids))
    # clamp then add on one feature: the clamped value plus α
    edit = Recording(sae, [Edit(j, 2.0), Edit(j, alpha, "add")])
    edit.calls = []
    with edit_residual(lm, LAYER, edit):
        _logits(lm, ids)
    x, new, _ = edit.calls[0]
    f = sae.encode(x)[1][..., j]
    w = sae.W_dec[:, j]
    torch.testing.assert_close(new - x, ((2.0 + alpha) - f)[..., None] * w, rtol=1e-4, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generation_with_and_without_the_cache_gives_the_same_tokens(
    lm: LoadedModel, sae: SparseAutoencoder, temperature: float
) -> None:
    prompts = encode_prompts(lm, PROMPTS)
    cfg = GenerateConfig(max_new_tokens=8, temperature=temperature, seed=3)
    j = _live_feature(lm, sae)
    for edit in (None, FeatureEdit(sae, [Edit(j, 6.0)]), FeatureEdit(sae, [Edit(j, 4.0, "add")])):
        cached = generate(lm, LAYER, prompts, edit, cfg)
        assert cached == generate(lm, LAYER, prompts, edit, cfg, use_cache=False)
        assert cached == generate(lm, LAYER, prompts, edit, cfg)  # deterministic for a seed
        if temperature == 0:  # left padding changes nothing: each prompt alone gives the same
            assert cached == [generate(lm, LAYER, [p], edit, cfg)[0] for p in prompts]
    steered = generate(
        lm, LAYER, prompts, FeatureEdit(sae, [Edit(j, 50.0)]), GenerateConfig(max_new_tokens=8)
    )
    assert steered != generate(lm, LAYER, prompts, None, GenerateConfig(max_new_tokens=8))


@torch.no_grad()
def test_streamed_tokens_are_the_returned_ones(lm: LoadedModel, sae: SparseAutoencoder) -> None:
    """``on_token`` sees each prompt's tokens in order, exactly the ids returned, and the same
    ids come out with or without it (batches of 2: a prompt's index is global)."""
    prompts = encode_prompts(lm, PROMPTS)
    cfg = GenerateConfig(max_new_tokens=8, temperature=1.0, seed=5, batch_size=2)
    edit = FeatureEdit(sae, [Edit(_live_feature(lm, sae), 6.0)])
    seen: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    out = generate(lm, LAYER, prompts, edit, cfg, on_token=lambda i, t: seen[i].append(t))
    assert out == generate(lm, LAYER, prompts, edit, cfg)
    assert [seen[i] for i in range(len(prompts))] == out

    class Stop(Exception):
        pass

    def stop_after_two(i: int, t: int) -> None:
        if len(seen[i]) >= 2:
            raise Stop
        seen[i].append(t)

    seen = {i: [] for i in range(len(prompts))}
    with pytest.raises(Stop):  # a callback that raises stops the generation (a client gone)
        generate(lm, LAYER, prompts[:1], edit, cfg, on_token=stop_after_two)
    assert edit.where is None  # the edit is left as it was


def test_steer_commands_and_the_measured_effect(capsys, monkeypatch, run: Path, lm, sae) -> None:
    j = _live_feature(lm, sae)
    base = ["steer", run, "--sae", "relu-64", "--feature", str(j), "--max-new-tokens", "4"]
    code, out, err = cli_out(capsys, monkeypatch, *base, "--scale", "5", "--prompt", PROMPTS[0])
    assert code == 0, err
    assert "unsteered" in out and f"#{j} clamp 5×max" in out and "effect:" in out
    code, out, err = cli_out(
        capsys, monkeypatch, *base, "--sweep", "0,2,5", "--prompt", PROMPTS[0], "--mode", "add"
    )
    assert code == 0, err
    assert "log-prob/token" in out
    first_cells = [line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")]
    assert first_cells == ["unsteered", "0", "2", "5"]  # the baseline first (add 0 is not one in clamp)
    prompts = run / "prompts.txt"
    prompts.write_text("# neutral\n" + "\n".join(PROMPTS) + "\n")
    code, out, err = cli_out(capsys, monkeypatch, *base, "--eval", "--sweep", "0,5", "--prompts", prompts)
    assert code == 0, err
    assert "steered (unsteered)" in out and "fires ≥0.1 max" in out and "repetition" in out
    assert "base" not in out  # the old table had three columns all headed "base"
    code, err = cli(
        capsys, monkeypatch, *base, "--eval", "--scale", "5", "--prompts", prompts, "--drop-error"
    )
    assert code == 0, err
    con = sqlite3.connect(run / "features.sqlite")
    rows = con.execute(
        "SELECT scale, keep_error, n_prompts, fire_rate, base_fire_rate, relative, logprob FROM steering "
        "ORDER BY keep_error, scale"
    ).fetchall()
    con.close()
    assert [(s, k, n) for s, k, n, *_ in rows] == [(5.0, 0, 3), (0.0, 1, 3), (5.0, 1, 3)]
    assert all(0 <= r[3] <= 1 and 0 <= r[4] <= 1 and r[6] < 0 for r in rows)
    con = sqlite3.connect(run / "features.sqlite")
    extra = con.execute(
        "SELECT strong_fire_rate, base_strong_fire_rate, repetition, base_repetition FROM steering"
    ).fetchall()
    con.close()
    assert all(0 <= x <= 1 for row in extra for x in row)
    # the report shows the measured effects and gives the steered feature a page (UMAP skipped: slow)
    import monosemantic.features.report as report_mod

    monkeypatch.setattr(
        report_mod, "cached_embed_2d", lambda x, _: np.random.default_rng(0).random((len(x), 2))
    )
    assert cli(capsys, monkeypatch, "report", run)[0] == 0
    page = (run / "report" / "index.html").read_text()
    assert "Steering: measured effects" in page and "error term dropped" in page
    assert (run / "report" / "features" / f"relu-64-{j}.html").is_file()


def test_demo_steering_example(capsys, monkeypatch, run: Path, lm) -> None:
    import monosemantic.steer_eval as steer_eval
    from monosemantic import terminal
    from monosemantic.stages.steer import run_demo_steering

    plant_feature(run, "relu-64", 7, "paris")
    assert (
        cli(
            capsys,
            monkeypatch,
            "analyze",
            run,
            "--sae",
            "relu-64",
            "--before",
            "6",
            "--after",
            "3",
            "--force",
        )[0]
        == 0
    )
    monkeypatch.setattr(steer_eval, "DEMO_QUERIES", ("paris",))
    con = db.open_db(run)
    spread = steer_eval.context_spread(con, "relu-64", [7, 10**6])
    con.close()
    assert 0 < spread[7] <= 1 and spread[10**6] == 0.0  # fires on its word only; no contexts at all
    monkeypatch.setattr(steer_eval, "DEMO_SPREAD", spread[7])
    terminal.steer_effects(*run_demo_steering(run, lm))
    out = capsys.readouterr().out
    assert "steering over 24 neutral prompts" in out and "example at scale 1.5" in out and "unsteered:" in out
    con = db.open_db(run)
    assert [tuple(r) for r in con.execute("SELECT feature, n_prompts FROM steering")] == [(7, 24)]
    con.close()


def test_pick_spread_takes_the_first_context_feature() -> None:
    from monosemantic.steer_eval import pick_spread

    spread = {1: 0.05, 2: 0.3, 3: 0.6, 4: 0.1}
    assert pick_spread([[1, 2, 3]], spread, 0.2) == 2  # search's order, not the largest spread
    assert pick_spread([[1, 4], [3]], spread, 0.2) == 3  # a later query's hit
    assert pick_spread([[1, 4]], spread, 0.2) == 4  # none reaches it: the largest spread
    assert pick_spread([[], []], spread, 0.2) is None


def test_inspect_matches_the_stored_activations(capsys, monkeypatch, run: Path, lm, sae) -> None:
    from monosemantic.features.inspect import open_inspector

    inspector = open_inspector(run, "relu-64", lm)
    con = db.open_db(run)
    words = db.vocab(con)
    row = db.analysis(con, "relu-64")
    assert row is not None
    checked = 0
    for j in range(0, 64, 7):
        for c in db.contexts(con, "relu-64", j, "top", words)[:2]:
            seq = db.sequence_tokens(con, int(row["corpus"]), c.seq).tolist()
            acts = inspector.activations(seq)[c.start : c.start + len(c.acts), j]
            stored = torch.tensor(c.acts, dtype=torch.float32)
            keep = torch.arange(c.start, c.start + len(c.acts)) > 0  # position 0 is never analysed
            # the store holds float16 activations; inspect reads the model in float32
            torch.testing.assert_close(acts[keep], stored[keep], rtol=2e-3, atol=2e-3)
            checked += 1
    con.close()
    assert checked > 5
    result = inspector.inspect_ids(seq, per_token=3, top=5)
    feats = inspector.activations(seq)
    assert [t.position for t in result.tokens] == list(range(1, len(seq)))
    for t in result.tokens:
        assert [f.feature for f in t.features] == [
            int(i) for i in feats[t.position].topk(3).indices if feats[t.position, i] > 0
        ]
    assert len(result.top) == 5 and result.top[0].relative >= result.top[-1].relative
    inspector.con.close()
    code, out, err = cli_out(
        capsys, monkeypatch, "inspect", run, "the code of paris", "--sae", "relu-64", "--json"
    )
    assert code == 0, err
    data = json.loads(out)
    assert [t["token"].strip() for t in data["tokens"]] == ["the", "code", "of", "paris"]
    text = run / "text.txt"
    text.write_text("sql select where")
    code, out, err = cli_out(capsys, monkeypatch, "inspect", run, "--file", text)
    assert code == 0, err
    assert "most active over the text" in out and "tokens read in" in out


def test_bad_input_is_one_line(capsys, monkeypatch, run: Path, tmp_path: Path) -> None:
    steer = ["steer", run, "--sae", "relu-64", "--prompt", "the code"]
    one_line_error(*cli(capsys, monkeypatch, *steer, "--feature", "64"), "0 to 63")
    one_line_error(*cli(capsys, monkeypatch, *steer, "--feature", "3", "--scale", "ten"), "not a number")
    one_line_error(*cli(capsys, monkeypatch, *steer, "--feature", "3", "--sweep", "1,x"), "not a number")
    one_line_error(*cli(capsys, monkeypatch, *steer, "--feature", "3", "--mode", "boost"), "--mode")
    one_line_error(
        *cli(capsys, monkeypatch, "steer", run, "--sae", "relu-64", "--feature", "3", "--prompt", " "),
        "empty",
    )
    one_line_error(*cli(capsys, monkeypatch, *steer, "--feature", "3", "--chat"), "chat template")
    one_line_error(
        *cli(capsys, monkeypatch, "steer", run, "--sae", "relu-16", "--feature", "3", "--prompt", "a"),
        "not analysed",
    )
    one_line_error(*cli(capsys, monkeypatch, "inspect", run, "  "), "empty")
    one_line_error(*cli(capsys, monkeypatch, "inspect", run, "the", "--sae", "relu-16"), "not analysed")
    one_line_error(*cli(capsys, monkeypatch, "inspect", tmp_path / "missing", "the"), "does not exist")
    bare = tmp_path / "bare"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("features.sqlite*"))
    one_line_error(*cli(capsys, monkeypatch, "steer", bare, "--feature", "3", "--prompt", "a"), "analyze")


@torch.no_grad()
def test_another_family_and_architecture(tmp_path: Path) -> None:
    """GPT-2 (learned positions, its own cache) with a TopK dictionary: cached, uncached and
    one-prompt-at-a-time generation agree, and the clamp changes the text."""
    from monosemantic.sae import ARCHITECTURES
    from tests.helpers import save_tiny

    gpt2 = load_model(str(save_tiny("gpt2", tmp_path / "gpt2")))
    topk = ARCHITECTURES["topk"](32, 64, k=4)
    topk.initialize(torch.Generator().manual_seed(0))
    prompts = encode_prompts(gpt2, PROMPTS)
    cfg = GenerateConfig(max_new_tokens=6)
    outs = []
    for edit in (None, FeatureEdit(topk, [Edit(3, 8.0)])):
        out = generate(gpt2, LAYER, prompts, edit, cfg)
        assert out == generate(gpt2, LAYER, prompts, edit, cfg, use_cache=False)
        assert out == [generate(gpt2, LAYER, [p], edit, cfg)[0] for p in prompts]
        outs.append(out)
    assert outs[0] != outs[1]


@torch.no_grad()
def test_generated_only_leaves_the_prompt_alone(lm: LoadedModel, sae: SparseAutoencoder) -> None:
    edit = Recording(sae, [Edit(_live_feature(lm, sae), 7.5)])
    edit.calls = []
    prompts = encode_prompts(lm, PROMPTS)
    generate(lm, LAYER, prompts, edit, GenerateConfig(max_new_tokens=4, steer_prompt=False))
    first = edit.calls[0][2]
    assert first is not None and first.sum(1).tolist() == [1, 1, 1] and first[:, -1].all()
    assert all(w is not None and w.all() for _, _, w in edit.calls[1:])


def test_repetition_counts_repeated_four_grams() -> None:
    from monosemantic.steer_score import repetition

    assert repetition(list(range(10))) == 0
    assert repetition([1, 2] * 6) == pytest.approx(1 - 2 / 9)  # 9 four-grams, 2 distinct
    assert np.isnan(repetition([1, 2, 3]))


def test_effects_go_into_a_steering_table_of_an_older_version(run: Path) -> None:
    """A run measured before the strong fire rate and repetition existed gets their columns."""
    from monosemantic.steer_eval import Effect, store_effects, stored_effects

    con = sqlite3.connect(run / "features.sqlite")
    con.execute(
        "CREATE TABLE steering (sae TEXT NOT NULL, feature INTEGER NOT NULL, mode TEXT NOT NULL, "
        "scale REAL NOT NULL, keep_error INTEGER NOT NULL, steered TEXT NOT NULL, settings TEXT NOT NULL, "
        "n_prompts INTEGER NOT NULL, fire_rate REAL NOT NULL, base_fire_rate REAL NOT NULL, "
        "relative REAL NOT NULL, base_relative REAL NOT NULL, promoted_logmass REAL, "
        "base_promoted_logmass REAL, logprob REAL NOT NULL, base_logprob REAL NOT NULL, "
        "example TEXT NOT NULL, base_example TEXT NOT NULL, completions TEXT NOT NULL, "
        "base_completions TEXT NOT NULL, "
        "PRIMARY KEY (sae, feature, mode, scale, keep_error, steered, settings))"
    )
    con.commit()
    con.close()
    e = Effect(3, "clamp", 2.0, True, [3], 1, 0.5, 0.0, 0.2, 0.0, -3.0, -4.0, -1.5, -1.2, "a", "b",
               ["x"], ["y"], 0.25, 0.0, 0.1, 0.05)  # fmt: skip
    store_effects(run, "relu-64", [e], "{}")
    con = db.open_db(run)
    (row,) = stored_effects(con)
    con.close()
    assert (row["strong_fire_rate"], row["repetition"], row["base_repetition"]) == (0.25, 0.1, 0.05)
    assert json.loads(row["completions"]) == ["x"] and row["keep_error"] == 1
