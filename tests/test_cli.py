"""The CLI end to end on a tiny model, resume after interruptions, and every bad-input case."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import monosemantic.activations as activations
from monosemantic.progress import progress_bar
from tests.helpers import (
    TRAIN,
    cli,
    harvest_args,
    main_exit_code,
    needs_minilm,
    one_line_error,
    reseal_shard,
    sigint_at,
)


def test_pipeline_end_to_end(capsys, monkeypatch, run: Path) -> None:
    manifest = json.loads((run / "activations" / "manifest.json").read_text())
    assert manifest["layer"] == 2 and manifest["d_model"] == 32
    assert sum(s["n_tokens"] for s in manifest["shards"] if s["split"] == "train") >= 3000
    acts = load_file(str(run / "activations" / manifest["shards"][0]["file"]))
    assert acts["acts"].shape == (manifest["shards"][0]["n_seqs"] * 15, 32)  # position 0 left out
    code, err = cli(capsys, monkeypatch, "train", "--out", run, *TRAIN)
    assert code == 0, err
    code, err = cli(capsys, monkeypatch, "evaluate", run, "--loss-sequences", "8")
    assert code == 0, err
    for n in (16, 64):
        m = json.loads((run / "saes" / f"relu-{n}" / "metrics.json").read_text())
        assert m["n_features"] == n and 0 < m["l0"] <= n
        assert m["variance_explained"] <= 1 and 0 <= m["dead_fraction"] <= 1
        assert m["loss_zero"] > m["loss_clean"] and "loss_recovered" in m
        cfg = json.loads((run / "saes" / f"relu-{n}" / "cfg.json").read_text())
        assert cfg["input_scale_folded"] and cfg["layer"] == 2
    # a rerun keeps what is up to date and measures what changed: other settings, or --force
    before = {n: (run / "saes" / f"relu-{n}" / "metrics.json").read_text() for n in (16, 64)}
    code, err = cli(capsys, monkeypatch, "evaluate", run, "--loss-sequences", "8")
    assert code == 0 and "up to date" in err
    assert {n: (run / "saes" / f"relu-{n}" / "metrics.json").read_text() for n in (16, 64)} == before
    code, err = cli(capsys, monkeypatch, "evaluate", run, "--loss-sequences", "4")
    assert code == 0 and "up to date" not in err
    assert json.loads((run / "saes" / "relu-16" / "metrics.json").read_text())["n_loss_sequences"] == 4
    code, err = cli(capsys, monkeypatch, "evaluate", run, "--loss-sequences", "4", "--force")
    assert code == 0 and "up to date" not in err
    code, err = cli(capsys, monkeypatch, "report", run)
    assert code == 0 and (run / "report" / "index.html").is_file()
    assert "relu-64" in (run / "report" / "index.html").read_text()


def test_harvest_resumes_after_interrupt(
    capsys, monkeypatch, tiny_llama_dir, tiny_corpus, run, tmp_path
) -> None:
    full, cut = run, tmp_path / "cut"  # full: harvested without interruption
    real_save, calls = activations.write_shard, []

    def flaky_save(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_save(*a, **k)

    monkeypatch.setattr(activations, "write_shard", flaky_save)
    code, err = cli(capsys, monkeypatch, *harvest_args(tiny_llama_dir, tiny_corpus, cut))
    assert code == 130 and "resume" in err
    assert len(json.loads((cut / "activations" / "manifest.json").read_text())["shards"]) == 2
    assert not list((cut / "activations").glob(".*tmp"))
    monkeypatch.setattr(activations, "write_shard", real_save)
    assert cli(capsys, monkeypatch, *harvest_args(tiny_llama_dir, tiny_corpus, cut))[0] == 0
    a = json.loads((full / "activations" / "manifest.json").read_text())
    b = json.loads((cut / "activations" / "manifest.json").read_text())
    assert a["shards"] == b["shards"]
    for s in a["shards"]:
        sa, sb = (
            load_file(str(full / "activations" / s["file"])),
            load_file(str(cut / "activations" / s["file"])),
        )
        assert torch.equal(sa["tokens"], sb["tokens"]) and torch.equal(sa["acts"], sb["acts"])


def test_train_resumes_after_ctrl_c_to_the_same_weights(capsys, monkeypatch, run: Path, tmp_path) -> None:
    other = tmp_path / "other"
    shutil.copytree(run, other)
    assert cli(capsys, monkeypatch, "train", "--out", run, *TRAIN)[0] == 0
    real_batches = activations.ActivationStore.batches
    monkeypatch.setattr(activations.ActivationStore, "batches", sigint_at(real_batches, 5))
    code, err = cli(capsys, monkeypatch, "train", "--out", other, *TRAIN)
    assert code == 130 and "resume" in err
    assert torch.load(other / "saes" / "relu-16" / "state.pt", weights_only=True)["step"] == 6
    monkeypatch.setattr(activations.ActivationStore, "batches", real_batches)
    assert cli(capsys, monkeypatch, "train", "--out", other, *TRAIN)[0] == 0
    for n in (16, 64):
        a = load_file(str(run / "saes" / f"relu-{n}" / "sae.safetensors"))
        b = load_file(str(other / "saes" / f"relu-{n}" / "sae.safetensors"))
        for k in a:
            assert torch.equal(a[k], b[k]), k
    # a rerun of the finished run trains nothing and says so, without an empty bar first
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["monosemantic", "train", "--out", str(other), *TRAIN])
    assert main_exit_code() == 0
    out, err = capsys.readouterr()
    assert "is trained" in err and "tok/s" not in out + err


def test_bad_model_and_layer(capsys, monkeypatch, tiny_llama_dir, tiny_corpus, tmp_path) -> None:
    one_line_error(
        *cli(capsys, monkeypatch, *harvest_args(tmp_path / "missing", tiny_corpus, tmp_path / "r")),
        "does not exist",
    )
    args = harvest_args(tiny_llama_dir, tiny_corpus, tmp_path / "r2")
    args[args.index("--layer") + 1] = "9"
    one_line_error(*cli(capsys, monkeypatch, *args), "between 0 and 3")


def test_empty_and_short_corpus(capsys, monkeypatch, tiny_llama_dir, tmp_path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, err = cli(capsys, monkeypatch, *harvest_args(tiny_llama_dir, empty, tmp_path / "r"))
    assert code == 2 and "Traceback" not in err and "empty" in err.lower()
    short = tmp_path / "short.txt"
    short.write_text("the code")
    code, err = cli(capsys, monkeypatch, *harvest_args(tiny_llama_dir, short, tmp_path / "r2"))
    assert code == 2 and "Traceback" not in err


def test_incompatible_run_dir_is_refused_unless_forced(
    capsys, monkeypatch, run: Path, tiny_llama_dir, tiny_corpus
):
    args = harvest_args(tiny_llama_dir, tiny_corpus, run)
    args[args.index("--layer") + 1] = "1"
    one_line_error(*cli(capsys, monkeypatch, *args), "--force")
    assert cli(capsys, monkeypatch, *args, "--force")[0] == 0
    assert json.loads((run / "activations" / "manifest.json").read_text())["layer"] == 1


def test_other_sizes_on_a_trained_run_are_refused_and_files_are_readable(
    capsys, monkeypatch, run: Path, tmp_path: Path
) -> None:
    assert cli(capsys, monkeypatch, "train", "--out", run, *TRAIN)[0] == 0
    other = [a if a != "16,64" else "32" for a in TRAIN]
    one_line_error(*cli(capsys, monkeypatch, "train", "--out", run, *other), "--force")
    assert not (run / "saes" / "relu-32").exists()
    for f in (run / "saes" / "relu-16").iterdir():  # as open() would make them, not mkstemp's 0600
        assert f.stat().st_mode & 0o044 == 0o044 & ~_umask(), f
    one_line_error(*cli(capsys, monkeypatch, "report", tmp_path / "nowhere"), "does not exist")
    assert not (tmp_path / "nowhere").exists()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_stage_recorded_by_an_older_version_is_named_so(tmp_path: Path) -> None:
    from monosemantic.config import TrainConfig, record_stage
    from monosemantic.errors import UserError

    record_stage(tmp_path, "train.relu", TrainConfig())
    text = (tmp_path / "run.toml").read_text()
    # as a version from before b_dec_init existed wrote it
    (tmp_path / "run.toml").write_text(text.replace('b_dec_init = "mean"\n', ""))
    with pytest.raises(UserError, match="no b_dec_init setting .recorded by an older version"):
        record_stage(tmp_path, "train.relu", TrainConfig())
    record_stage(tmp_path, "train.relu", TrainConfig(), force=True)


def test_a_topk_run_recorded_before_dec_init_norm_was_resolved_still_resumes(tmp_path: Path) -> None:
    """Before, run.toml and checkpoints said dec_init_norm = 0.1 for a TopK-family decoder initialised
    at norm 1 (the family ignored the setting); that record is taken for the 1.0 it resolves to now,
    and rewritten so."""
    from monosemantic.config import TrainConfig, record_stage, same_setting
    from monosemantic.errors import UserError

    record_stage(tmp_path, "train.batchtopk", TrainConfig(arch="batchtopk"))
    text = (tmp_path / "run.toml").read_text()
    assert "dec_init_norm = 1.0\n" in text
    (tmp_path / "run.toml").write_text(text.replace("dec_init_norm = 1.0\n", "dec_init_norm = 0.1\n"))
    record_stage(tmp_path, "train.batchtopk", TrainConfig(arch="batchtopk"))
    assert "dec_init_norm = 1.0\n" in (tmp_path / "run.toml").read_text()
    with pytest.raises(UserError, match="dec_init_norm=1.0, not dec_init_norm=0.3"):
        record_stage(tmp_path, "train.batchtopk", TrainConfig(arch="batchtopk", dec_init_norm=0.3))
    # the checkpoint's comparison (train.py, SizeState.restore) takes the same view
    assert same_setting("dec_init_norm", 0.1, 1.0, "topk")
    assert not same_setting("dec_init_norm", 0.1, 1.0, "relu")
    # a ReLU run records what it always did
    record_stage(tmp_path, "train.relu", TrainConfig())
    relu = tomllib.loads((tmp_path / "run.toml").read_text())["train"]["relu"]
    assert (relu["dec_init_norm"], relu["enc_init_norm"]) == (0.1, 0.1)


def test_an_option_of_another_architecture_is_one_line(capsys, monkeypatch, run: Path) -> None:
    train = ["train", "--out", run, "--sizes", "16,64"]
    one_line_error(
        *cli(capsys, monkeypatch, *train, "--arch", "relu", "--k", "8"),
        "--k applies to --arch topk, batchtopk or matryoshka, not relu: "
        "drop it or train an architecture that reads it",
    )
    one_line_error(
        *cli(capsys, monkeypatch, *train, "--arch", "topk", "--plain-encoder", "--l1-coeff", "5"),
        "--l1-coeff applies to --arch relu or jumprelu, not topk",
    )
    assert not (run / "saes").exists()


def test_nan_activations_name_the_shard(capsys, monkeypatch, run: Path) -> None:
    shard = run / "activations" / "shard-00001.safetensors"
    data = load_file(str(shard))
    data["acts"][3, 5] = float("nan")
    save_file(data, str(shard))
    reseal_shard(run, shard.name)  # a NaN that came out of the model, not a corrupt file
    one_line_error(*cli(capsys, monkeypatch, "train", "--out", run, *TRAIN), "NaN/Inf")


def test_corrupt_and_mismatched_checkpoints(capsys, monkeypatch, run: Path) -> None:
    assert cli(capsys, monkeypatch, "train", "--out", run, *TRAIN, "--epochs", "0.5")[0] == 0
    state = run / "saes" / "relu-16" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    one_line_error(*cli(capsys, monkeypatch, "train", "--out", run, *TRAIN, "--epochs", "0.5"), "corrupt")
    shutil.copy(run / "saes" / "relu-64" / "state.pt", state)
    one_line_error(*cli(capsys, monkeypatch, "train", "--out", run, *TRAIN, "--epochs", "0.5"), "relu-16")
    (run / "saes" / "relu-64" / "sae.safetensors").write_bytes(b"garbage")
    one_line_error(*cli(capsys, monkeypatch, "evaluate", run, "--loss-sequences", "0"), "corrupt")


def test_stage_order_errors(capsys, monkeypatch, tmp_path) -> None:
    one_line_error(*cli(capsys, monkeypatch, "train", "--out", tmp_path / "nothing"), "harvest")
    one_line_error(*cli(capsys, monkeypatch, "evaluate", tmp_path / "nothing"), "harvest")


def test_console_script_prints_one_line_without_traceback(tmp_path) -> None:
    exe = Path(sys.executable).with_name("monosemantic")
    proc = subprocess.run(
        [str(exe), "harvest", "--out", str(tmp_path / "r"), "--model", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    one_line_error(proc.returncode, proc.stderr, "does not exist")


@pytest.mark.slow
@needs_minilm
def test_a_progress_bar_written_to_a_log_keeps_its_numbers(capsys) -> None:
    # Off a terminal a bar prints once, when it stops; at rich's 80 columns the counts, rate and
    # the training figures were cut to "1999…".
    with progress_bar() as bar:
        task = bar.add_task("train 2304/9216/36864", total=1_999_872, info="L0 64.0  FVU 0.123  dead 0.5%")
        bar.update(task, advance=1_999_872)
    out = capsys.readouterr().out
    assert "1999872/1999872" in out and "tok/s" in out and "dead 0.5%" in out
    assert len(out.splitlines()) == 1


def test_demo_runs_every_stage(capsys, monkeypatch, tiny_llama_dir, tiny_corpus, tmp_path) -> None:
    out = tmp_path / "demo"
    from monosemantic.features import label

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # a two-entry lexicon keeps explain quick
    monkeypatch.setattr(
        label, "lexicon", lambda: [label.Entry("city", "a city"), label.Entry("code", "code")]
    )
    args = [
        "demo",
        "--out",
        out,
        "--model",
        tiny_llama_dir,
        "--corpus",
        tiny_corpus,
        "--tokens",
        "4000",
        "--sizes",
        "16,64",
        "--epochs",
        "2",
    ]
    monkeypatch.setattr(sys, "argv", ["monosemantic", *map(str, args)])
    code = main_exit_code()
    captured = capsys.readouterr()
    err = captured.err
    assert code == 0, err
    for n in (16, 64):
        assert (out / "saes" / f"relu-{n}" / "metrics.json").is_file()
    assert (out / "report" / "index.html").is_file()
    # it ends with the short summary (stdout), not the explanation table
    assert "catalog:" in err and "explain:" in err and "detection AUC mean" not in captured.out
    assert "report:" in captured.out and "index.html" in captured.out and "try next" in captured.out
    assert "monosemantic serve" in captured.out
    # the features too: every size analysed, the catalog ranked for the largest, in the report
    con = sqlite3.connect(out / "features.sqlite")
    analysed = con.execute("SELECT sae FROM analyses WHERE finished = 1 ORDER BY sae").fetchall()
    assert analysed == [("relu-16",), ("relu-64",)]
    assert con.execute("SELECT DISTINCT sae FROM catalog").fetchall() == [("relu-64",)]
    con.close()
    assert "Map of relu-64" in (out / "report" / "index.html").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_a_device_torch_cannot_use_is_one_line(capsys, monkeypatch, run: Path) -> None:
    """--device cuda on a CPU-only torch, and a device that does not exist, were tracebacks from the
    first tensor moved there (the training memory check); now they are refused before any work."""
    train = ["train", "--out", run, "--sizes", "16"]
    for device in ("cuda", "cuda:1"):
        one_line_error(*cli(capsys, monkeypatch, *train, "--device", device), "this torch sees no CUDA GPU")
    one_line_error(*cli(capsys, monkeypatch, *train, "--device", "gpu0"), "'gpu0' is not a device")
    assert cli(capsys, monkeypatch, *train, "--device", "cpu")[0] == 0


def test_harvest_settings_without_model_are_refused_by_train(capsys, monkeypatch, run: Path) -> None:
    """train's --tokens/--layer/--corpus... set on-the-fly training (--model); on a run's store they
    were ignored without a word (--tokens 50000 trained the whole store, --layer 3 the stored layer)."""
    train = ["train", "--out", run, "--sizes", "16"]
    for flag, value in (("--tokens", "5000"), ("--layer", "0"), ("--corpus", "x.txt"), ("--seq-len", "8")):
        one_line_error(
            *cli(capsys, monkeypatch, *train, flag, value), f"{flag} applies to on-the-fly training (--model)"
        )
    assert cli(capsys, monkeypatch, *train, "--device", "cpu", "--epochs", "0.5")[0] == 0
