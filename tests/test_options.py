"""Options generated from the config dataclasses: one field is one option on every command built
on its config, with the field's default and help, and the value comes back as the field."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import typer
from typer.testing import CliRunner

from monosemantic.cli import app
from monosemantic.config import (
    AnalyzeConfig,
    CatalogConfig,
    EvalConfig,
    ExplainConfig,
    GenerateConfig,
    HarvestConfig,
    ScalingConfig,
    TrainConfig,
    _f,
)
from monosemantic.errors import UserError
from monosemantic.options import ConfigOptions, cli_fields, config_options, flag_of

COMMANDS = {
    "harvest": HarvestConfig,
    "train": TrainConfig,
    "evaluate": EvalConfig,
    "scaling": ScalingConfig,
    "analyze": AnalyzeConfig,
    "explain": ExplainConfig,
    "catalog": CatalogConfig,
    "steer": GenerateConfig,
}
SKIPPED = {"steer": {"batch_size"}}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_config_field_is_an_option(command):
    group = typer.main.get_command(app)  # typer >= 0.29 vendors its own click: no isinstance check
    params = {opt: p for p in group.commands[command].params for opt in getattr(p, "opts", [])}
    for f in cli_fields(COMMANDS[command]):
        if f.name in SKIPPED.get(command, ()):
            continue
        flag = flag_of(f).split("/")[0]
        assert flag in params, f"{command} lacks {flag}"
        assert params[flag].help == f.metadata["help"]
        default = f.default if not isinstance(f.default, tuple) else ",".join(map(str, f.default))
        assert params[flag].default == default, (command, flag)


def test_internal_fields_stay_off_the_command_line():
    group = typer.main.get_command(app)  # typer >= 0.29 vendors its own click: no isinstance check
    opts = {o for p in group.commands["harvest"].params for o in getattr(p, "opts", [])}
    assert "--on-the-fly" not in opts and "--tokens" in opts and "--n-tokens" not in opts


@dataclass
class _Inner:
    size: int = _f(3, "a size")
    widths: list[int] = _f((1, 2), "widths", flag="--w")
    device: str = _f("cpu", "where")

    def __post_init__(self) -> None:
        self.widths = [int(w) for w in self.widths]
        if self.size <= 0:
            raise UserError("--size must be positive")


@dataclass
class _Outer:
    rate: float = _f(0.5, "a rate")
    device: str = _f("cpu", "where (shared)")
    name: str = _f("x", "a name the command overrides")


def _planted_app(seen: dict) -> typer.Typer:
    planted = typer.Typer()

    @planted.command()
    @config_options(_Outer, "outer")
    @config_options(_Inner)
    def go(
        cfg: ConfigOptions[_Inner],
        outer: ConfigOptions[_Outer],
        name: str = typer.Option("own", "--name", help="declared by the command"),
        flag: bool = typer.Option(False, "--flag"),
    ) -> None:
        seen.update(inner=cfg.build(), outer=outer.build(), name=name, flag=flag)

    @planted.command()
    def other() -> None:  # a second command keeps typer from folding `go` into the root
        pass

    return planted


def test_stacked_configs_share_a_flag_and_the_command_keeps_its_own():
    seen: dict = {}
    res = CliRunner().invoke(
        _planted_app(seen), ["go", "--size", "7", "--w", "4,5", "--device", "gpu", "--rate", "2", "--flag"]
    )
    assert res.exit_code == 0, res.output
    assert seen["inner"] == _Inner(size=7, widths=[4, 5], device="gpu")
    assert seen["outer"] == _Outer(rate=2.0, device="gpu", name="own")
    assert seen["name"] == "own" and seen["flag"] is True


def test_defaults_and_validation_come_from_the_dataclass():
    seen: dict = {}
    assert CliRunner().invoke(_planted_app(seen), ["go"]).exit_code == 0
    assert seen["inner"] == _Inner() and seen["outer"] == _Outer(name="own")
    res = CliRunner().invoke(_planted_app(seen), ["go", "--size", "0"])
    assert isinstance(res.exception, UserError) and "--size" in str(res.exception)
    res = CliRunner().invoke(_planted_app(seen), ["go", "--w", "1,a"])
    assert isinstance(res.exception, UserError) and "--w" in str(res.exception)


def _commands(group, prefix=""):
    """(name, command) of every command, subcommands of groups included."""
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, f"{prefix}{name} ")
        else:
            yield prefix + name, cmd


def test_every_device_option_defaults_to_auto():
    """A trial user found `steer --device` on cpu while `evaluate` picked the GPU: one default."""
    group = typer.main.get_command(app)
    defaults = {
        name: p.default
        for name, cmd in _commands(group)
        for p in cmd.params
        if "--device" in getattr(p, "opts", [])
    }
    assert "steer" in defaults and "inspect" in defaults
    assert {n: d for n, d in defaults.items() if d != "auto"} == {}
