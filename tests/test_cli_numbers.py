"""Every numeric option of every command, fed generated values (negative, zero, huge, NaN/inf):
a one-line error or success, never a traceback. Validation runs before any model loads: loading a
model, training, sweeping and serving are replaced by a stub that stops the command with a known error."""

from __future__ import annotations

import sys
import typing
from pathlib import Path

import pytest
import typer.main
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import monosemantic.models
import monosemantic.scaling
import monosemantic.train
from monosemantic.cli import app, main
from monosemantic.errors import UserError
from tests.helpers import cli, harvest_args, one_line_error


def _numeric_params() -> list[tuple[str, str, str, type]]:
    """(command, parameter name, flag or '' for an argument, int or float) for every command."""
    out = []
    group = typer.main.get_command(app)
    for name, command in sorted(group.commands.items()):  # type: ignore[attr-defined]
        hints = typing.get_type_hints(command.callback)
        for p in command.params:
            kind = hints.get(p.name)
            if kind in (int, float):
                flag = (
                    next((o for o in p.opts if o.startswith("--")), "")
                    if p.param_type_name == "option"
                    else ""
                )
                out.append((name, p.name, flag, kind))
    return out


PARAMS = _numeric_params()


class _Stub(UserError):
    pass


def _stub(*_a, **_k):
    raise _Stub("stub: the command got past its checks")


@pytest.fixture(scope="module")
def store_run(tmp_path_factory, tiny_llama_dir: Path, tiny_corpus: Path) -> Path:
    """A run directory with a small harvested store (the train and scaling commands read it)."""
    out = tmp_path_factory.mktemp("numbers") / "run"
    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "argv", ["monosemantic", *map(str, harvest_args(tiny_llama_dir, tiny_corpus, out))])
    with pytest.raises(SystemExit) as e:
        main()
    mp.undo()
    assert e.value.code == 0
    return out


def _base(command: str, run: Path, scratch: Path, model: Path, corpus: Path) -> tuple[list[str], list[str]]:
    """(leading arguments, options) that take the command as far as it goes on the tiny run."""
    io = ["--model", str(model), "--corpus", str(corpus), "--seq-len", "16", "--layer", "2"]
    return {
        "harvest": ([], ["--out", str(scratch), *io]),
        "demo": ([], ["--out", str(scratch), "--model", str(model), "--corpus", str(corpus)]),
        "train": ([], ["--out", str(run), "--sizes", "16,64"]),
        "evaluate": ([str(run)], []),
        "scaling": ([str(run)], []),
        "analyze": ([str(run)], []),
        "feature": ([str(run), "1"], []),
        "family": ([str(run), "1"], []),
        "search": ([str(run), "code"], []),
        "explain": ([str(run)], []),
        "catalog": ([str(run)], []),
        "steer": ([str(run)], ["--feature", "1", "--prompt", "hello"]),
        "inspect": ([str(run), "hello"], []),
    }.get(command, ([str(run)], []))


def _text(value: float) -> str:
    return repr(value) if isinstance(value, float) else str(value)


INTS = st.one_of(
    st.sampled_from([0, -1, -2, 1, 2, 10**15, 2**63, -(2**63), 10**30]), st.integers(-(10**6), 10**6)
)
FLOATS = st.one_of(
    st.sampled_from([0.0, -0.0, -1.0, 1.0, float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 5e-324]),
    st.floats(-1e6, 1e6),
)


@pytest.mark.parametrize(
    ("command", "name", "flag", "kind"), PARAMS, ids=[f"{c}-{n}" for c, n, _, _ in PARAMS]
)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_numeric_option_gives_a_one_line_error_or_runs(
    data, command, name, flag, kind, store_run, tiny_llama_dir, tiny_corpus, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(monosemantic.models, "load_model", _stub)
    monkeypatch.setattr(monosemantic.train, "train", _stub)
    monkeypatch.setattr(monosemantic.scaling.Sweep, "run", _stub)
    monkeypatch.setattr(uvicorn, "run", _stub)  # `serve` with a valid --port would serve until killed
    value = data.draw(INTS if kind is int else FLOATS)
    lead, opts = _base(command, store_run, tmp_path / "scratch", tiny_llama_dir, tiny_corpus)
    if flag:
        if flag in opts:  # replace the base value
            i = opts.index(flag)
            opts = opts[:i] + opts[i + 2 :]
        args = [command, *lead, *opts, f"{flag}={_text(value)}"]
    else:  # the positional FEATURE: after `--`, so that a negative number is not an option
        args = [command, lead[0], *opts, "--", _text(value), *lead[2:]]
    code, err = cli(capsys, monkeypatch, *args)
    assert "Traceback" not in err, (args, err)
    assert code in (0, 2), (args, code, err)
    if code == 2 and "error: stub:" not in err:  # past the checks, a command may have said more first
        assert "error:" in err and len(err.strip().splitlines()) == 1, (args, err)


def test_the_walk_covers_every_command() -> None:
    commands = {c for c, *_ in PARAMS}
    assert {"harvest", "train", "evaluate", "scaling", "analyze", "feature", "family", "search"} <= commands
    assert ("train", "k", "--k", int) in PARAMS and ("harvest", "layer", "--layer", int) in PARAMS


def test_reported_cases(capsys, monkeypatch, store_run, tiny_llama_dir, tiny_corpus, tmp_path) -> None:
    args = harvest_args(tiny_llama_dir, tiny_corpus, tmp_path / "r")
    i = args.index("--layer")
    layer = [*args[:i], *args[i + 2 :], "--layer=-2"]
    one_line_error(*cli(capsys, monkeypatch, *layer), "-1 for the middle")
    assert not (tmp_path / "r").exists()  # refused before anything is written
    train = ["train", "--out", str(store_run), "--sizes", "16,64", "--arch", "topk"]
    one_line_error(*cli(capsys, monkeypatch, *train, "--k", "0"), "--k must be between 1 and 16")
    one_line_error(*cli(capsys, monkeypatch, *train, "--k=-3"), "--k must be between 1 and 16")
    one_line_error(*cli(capsys, monkeypatch, *train, "--k", "17"), "--k must be between 1 and 16")
    one_line_error(*cli(capsys, monkeypatch, *train, "--lr", "nan"), "--lr must be a finite number")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["train", "--bogus"], "No such option"),
        (["nosuchcmd"], "No such command"),
        (["harvest", "--tokens", "many"], "Invalid value"),
    ],
)
def test_usage_errors_are_one_line(capsys, monkeypatch, args, says) -> None:
    code, err = cli(capsys, monkeypatch, *args)
    one_line_error(code, err, says)
    assert "--help" in err, err
