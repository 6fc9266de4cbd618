"""Options generated from the config dataclasses: one field is one option on every command built
on its config, with the field's default and help, and the value comes back as the field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

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


# A value other than the default for every field that only some architectures read.
ARCH_ONLY: dict[str, Any] = {
    "l1_coeff": 2.0,
    "k": 4,
    "k_aux": 8,
    "aux_coeff": 0.5,
    "group_sizes": [32, 16, 16],
    "bandwidth": 0.2,
    "init_threshold": 0.3,
    "threshold_lr_scale": 2.0,
    "preact_coeff": 0.0,
    "resample_dead": True,
    "l1_warmup": 0.1,
    "centred_encoder": False,
}


@pytest.mark.parametrize("name", sorted(ARCH_ONLY))
def test_an_option_of_another_architecture_is_refused(name: str) -> None:
    """An option that the chosen --arch does not read would be ignored: it is refused, in one line
    naming the option as typed and the architectures it applies to; they accept it."""
    from monosemantic.sae import ARCHITECTURES

    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    archs = f.metadata["archs"]
    assert archs and set(archs) < set(ARCHITECTURES)
    flag = flag_of(f).split("/")[0 if ARCH_ONLY[name] else -1]  # --plain-encoder for False
    for arch in ARCHITECTURES:
        if arch in archs:
            cfg = TrainConfig(arch=arch, sizes=[32, 64], **{name: ARCH_ONLY[name]})
            assert getattr(cfg, name) == ARCH_ONLY[name]
            continue
        with pytest.raises(UserError) as e:
            TrainConfig(arch=arch, sizes=[32, 64], **{name: ARCH_ONLY[name]})
        msg = str(e.value)
        assert msg.startswith(f"{flag} applies to --arch ") and f", not {arch}: " in msg and "\n" not in msg
        TrainConfig(arch=arch, sizes=[32, 64], **{name: f.default})  # the default is no choice


def test_every_architecture_specific_field_is_tested() -> None:
    assert {f.name for f in dataclasses.fields(TrainConfig) if f.metadata["archs"]} == set(ARCH_ONLY)


def test_scaling_refuses_options_of_another_architecture_and_trains_with_the_others() -> None:
    from monosemantic.config import for_arch

    with pytest.raises(UserError, match=r"^--k applies to --arch topk, batchtopk or matryoshka, not relu"):
        ScalingConfig(arch="relu", k=8)
    with pytest.raises(UserError, match=r"^--l1-coeff applies to --arch relu or jumprelu, not topk"):
        ScalingConfig(arch="topk", l1_coeff=2.0)
    with pytest.raises(UserError, match="unknown --arch"):
        ScalingConfig(arch="sparse")
    cfg = ScalingConfig(arch="topk", k=8)
    assert for_arch(TrainConfig, cfg.arch, l1_coeff=cfg.l1_coeff, k=cfg.k) == {"k": 8}
    assert for_arch(TrainConfig, "relu", l1_coeff=2.0, k=8) == {"l1_coeff": 2.0}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_refused_number_names_the_flag_the_user_typed(command: str) -> None:
    """Every numeric option that refuses a bad value says so with its own flag: TrainConfig's batch
    size said --batch-size where the option is --train-batch-size, EvalConfig's said batch_size."""
    cls = COMMANDS[command]
    checked = 0
    for f in cli_fields(cls):
        if f.type not in ("int", "float") or f.name in SKIPPED.get(command, set()):
            continue
        for bad in (-(10**9), 10**12):
            try:
                cls(**{f.name: bad})
            except UserError as e:
                assert flag_of(f).split("/")[0] in str(e), (f.name, str(e))
                checked += 1
    assert checked > 0
