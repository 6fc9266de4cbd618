"""Command-line options generated from the stage dataclasses of ``config.py``.

A config field is the one source of an option: its name gives the flag (``--l1-coeff``, or the
``flag`` in its metadata where the field's name is not what users type: ``n_tokens`` -> ``--tokens``),
its default and help text come from the field, and the value comes back as the field. Adding a
setting to a stage is one field; every command built on that config offers it.

``@config_options(TrainConfig)`` adds one typer option per field to a command and hands the command
a ``ConfigOptions`` in place of the individual values; ``.build()`` makes the dataclass (whose
``__post_init__`` validates it). Decorators stack: two configs that share a flag (``--device``)
share one option. A parameter the command declares itself, under a field's name, replaces the
generated option (e.g. ``train --model`` whose default means "no model: read the store").
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar

import typer

from monosemantic.config import flag_of as flag_of  # re-exported: the CLI's name for it
from monosemantic.errors import UserError

C = TypeVar("C")

OUT = typer.Option(Path("runs/demo"), "--out", "-o", help="run directory")
RUN = typer.Argument(..., help="run directory (as given to --out)")
FORCE = typer.Option(
    False, "--force", help="discard this stage's earlier output if its configuration differs"
)
SAE = typer.Option("", "--sae", help="dictionary, e.g. relu-2048 (default: the largest analysed one)")


def _param_name(flag: str) -> str:
    """'--l1-coeff' -> 'l1_coeff'; a boolean's '--keep-error/--drop-error' -> 'keep_error'."""
    return flag.split("/")[0].lstrip("-").replace("-", "_")


def option_defaults(cls: type) -> dict[str, Any]:
    """Each field's default as its option holds it (list fields as comma-separated text)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = ",".join(map(str, f.default)) if isinstance(f.default, tuple | list) else f.default
    return out


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a config dataclass that are command-line options (``cli=False`` in a field's
    metadata keeps one internal)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def parse_list(text: str | list | tuple, of: type, flag: str) -> list:
    """'1,2,3' -> [1, 2, 3] for a list option.

    Raises:
        UserError: an item is not of type ``of``.
    """
    if not isinstance(text, str):
        return list(text)
    try:
        return [of(s) for s in map(str.strip, text.split(",")) if s]
    except ValueError as e:
        raise UserError(f"{flag} {text!r} must be comma-separated {of.__name__} values, e.g. 1,2,3") from e


class ConfigOptions(Generic[C]):
    """The values a command received for the fields of one config dataclass, as typed on the
    command line (list fields still as their comma-separated text)."""

    def __init__(self, cls: type[C], values: dict[str, Any]) -> None:
        self.cls = cls
        self.values = values

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def changed(self) -> list[tuple[str, str]]:
        """(field name, flag) of each option given a value other than its default (list fields
        compared as their comma-separated text)."""
        defaults = option_defaults(self.cls)
        return [
            (f.name, flag_of(f).split("/")[0])
            for f in cli_fields(self.cls)
            if f.name in self.values and f.name in defaults and self.values[f.name] != defaults[f.name]
        ]

    def build(self, **overrides: Any) -> C:
        """The validated dataclass; ``overrides`` replace values (already in their field type).

        Raises:
            UserError: a value is out of range (from the dataclass's ``__post_init__``).
        """
        hints = typing.get_type_hints(self.cls)
        kwargs = {}
        for f in cli_fields(self.cls):
            if f.name in overrides or f.name not in self.values:
                continue
            value = self.values[f.name]
            if typing.get_origin(hints[f.name]) is list:
                (of,) = typing.get_args(hints[f.name])
                value = parse_list(value, of, flag_of(f))
            kwargs[f.name] = value
        return self.cls(**kwargs, **overrides)


def _option_type(hint: Any) -> Any:
    return str if typing.get_origin(hint) is list else hint


def config_options(
    cls: type, name: str = "cfg", only: Iterable[str] | None = None, skip: Iterable[str] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a typer command with one option per field of ``cls`` (all, or ``only`` these field
    names, minus ``skip``); the command receives them as ``name: ConfigOptions``.

    The wrapper's signature (what typer reads) is the command's own parameters, minus ``name``, plus
    the generated options; a field whose option the command (or an inner decorator) already
    declares is not declared twice, and its value goes to both.
    """
    hints = typing.get_type_hints(cls)
    wanted = set(only) if only is not None else None
    fields = [f for f in cli_fields(cls) if (wanted is None or f.name in wanted) and f.name not in set(skip)]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(fn, eval_str=True)
        params = [p for p in own.parameters.values() if p.name != name]
        declared = {p.name for p in params}
        field_param: dict[str, str] = {}
        for f in fields:
            pname = f.name if f.name in declared else _param_name(flag_of(f))
            field_param[f.name] = pname
            if pname in declared:
                continue
            default = f.default if f.default is not dataclasses.MISSING else ...
            if isinstance(default, tuple | list):
                default = ",".join(map(str, default))
            option = typer.Option(default, flag_of(f), help=f.metadata.get("help", ""))
            params.append(
                inspect.Parameter(
                    pname,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=option,
                    annotation=_option_type(hints[f.name]),
                )
            )
            declared.add(pname)
        passed = [p.name for p in own.parameters.values() if p.name != name]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            values = {fname: kwargs[p] for fname, p in field_param.items() if p in kwargs}
            return fn(**{k: kwargs[k] for k in passed if k in kwargs}, **{name: ConfigOptions(cls, values)})

        wrapper.__signature__ = own.replace(  # type: ignore[attr-defined]
            parameters=sorted(params, key=lambda p: p.kind)
        )
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # typer must read the new signature, not the command's own
        return wrapper

    return decorate
