"""Service configs from flags and environment, in one place.

Each service has one frozen dataclass; `parse_config` gives every field a flag
(`max_num_seqs` -> `--max-num-seqs`) and an environment variable
(`SARATHI_SCHEDULER_MAX_NUM_SEQS`), the flag winning. `to_argv` is its inverse: the
flags of a config, for a process that starts a service (`sarathi-serve up`).
Validation stays in the dataclass's `__post_init__`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def parse_config(
    cls: type[T], argv: list[str] | None, *, role: str, helps: Mapping[str, str] | None = None
) -> T:
    defaults = cls()
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(prog=f"sarathi-serve-{role}", description=cls.__doc__)
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        env = f"SARATHI_{role.upper()}_{field.name.upper()}"
        kind = _scalar_type(hints[field.name])
        raw = os.environ.get(env)
        text = (helps or {}).get(field.name, "")
        flag = field_flag(field.name)
        if kind is bool:
            default = (
                getattr(defaults, field.name)
                if raw is None
                else raw.lower() in ("1", "true", "yes")
            )
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=f"{text} (env {env})",
            )
            continue
        default = getattr(defaults, field.name) if raw is None else kind(raw)
        parser.add_argument(
            flag,
            type=kind,
            default=default,
            help=f"{text} (env {env}; default {default!r})".strip(),
        )
    try:
        return cls(**vars(parser.parse_args(argv)))
    except ValueError as exc:
        parser.error(str(exc))


def to_argv(config: Any, *, include: Iterable[str] = ()) -> list[str]:
    """The flags that `parse_config` turns back into `config` (a config dataclass).

    A field is given when it differs from the dataclass default, or when `include`
    names it: a flag wins over the environment, so an included field is pinned, while
    the service reads every field left out from its environment as usual.
    """
    cls = type(config)
    defaults = cls()
    names = [field.name for field in dataclasses.fields(cls)]
    pinned = set(include)
    if unknown := pinned - set(names):
        raise ValueError(f"{cls.__name__} has no field {', '.join(sorted(unknown))}")
    argv: list[str] = []
    for name in names:
        value = getattr(config, name)
        if name in pinned or value != getattr(defaults, name):
            argv += _flag_argv(field_flag(name), value)
    return argv


def _flag_argv(flag: str, value: object) -> list[str]:
    if isinstance(value, bool):  # before int: a bool is an int
        return [flag if value else "--no-" + flag.removeprefix("--")]
    if not isinstance(value, (str, int, float)):
        raise TypeError(f"{flag}: {value!r} has no flag spelling (str, int, float or bool)")
    text = str(value)  # a float's str is its shortest round-tripping repr
    # `--seed -1` would read -1 as a flag of its own
    return [f"{flag}={text}"] if text.startswith("-") else [flag, text]


def field_flag(name: str) -> str:
    """`max_num_seqs` -> `--max-num-seqs`."""
    return "--" + name.replace("_", "-")


def add_field_argument(
    parser: argparse.ArgumentParser,
    cls: type,
    name: str,
    help: str,
    *,
    flag: str | None = None,
    **kwargs: Any,
) -> None:
    """A flag of another command (`sarathi-serve up`) that sets field `name` of `cls`:
    the field's type and default (not its environment variable), under `flag`."""
    kwargs.setdefault("default", getattr(cls(), name))
    kind = _scalar_type(typing.get_type_hints(cls)[name])
    if kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = kind
    parser.add_argument(flag or field_flag(name), help=help, **kwargs)


def _scalar_type(hint: Any) -> Any:
    """`int | None` -> int; a plain type is returned as is."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def split_addrs(value: str) -> list[str]:
    """`"a:1, b:2"` -> `["a:1", "b:2"]` (a leader and its standbys)."""
    return [a.strip() for a in value.split(",") if a.strip()]
