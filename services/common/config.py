"""Service configs from flags and environment, in one place.

Each service has one frozen dataclass; `parse_config` gives every field a flag
(`max_num_seqs` -> `--max-num-seqs`) and an environment variable
(`SARATHI_SCHEDULER_MAX_NUM_SEQS`), the flag winning. Validation stays in the
dataclass's `__post_init__`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Mapping
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
        flag = "--" + field.name.replace("_", "-")
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


def _scalar_type(hint: Any) -> Any:
    """`int | None` -> int; a plain type is returned as is."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def split_addrs(value: str) -> list[str]:
    """`"a:1, b:2"` -> `["a:1", "b:2"]` (a leader and its standbys)."""
    return [a.strip() for a in value.split(",") if a.strip()]
