"""OpenAI's (and vLLM's) ways of asking for structured output, read into one constraint.

- `response_format`: {"type": "text"} (nothing), {"type": "json_object"} (any JSON
  object), {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}.
- vLLM's `structured_outputs`: exactly one of `json` (a schema, object or text),
  `regex`, `choice` (strings), `grammar` (EBNF) or `json_object: true`; and its older
  top-level `guided_json`, `guided_regex`, `guided_choice` and `guided_grammar`.

A request may use one of them. Whether the grammar compiles is checked by the validator
(naming the field), the same for both edges.
"""

from __future__ import annotations

import json
from typing import Any

from sarathi_serve.common.errors import InvalidArgument
from sarathi_serve.common.grammar import ANY_OBJECT
from sarathi_serve.common.sampling import Grammar
from sarathi_serve.gateway.generate_input import OutputConstraint

_STRUCTURED_KEYS = ("json", "regex", "choice", "grammar", "json_object")
_GUIDED = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
}
CONSTRAINT_FIELDS = ("response_format", "structured_outputs", *_GUIDED)  # of a request body


def output_constraint(body: dict[str, Any]) -> OutputConstraint | None:
    """The one constraint a request body asks for (None: none), or InvalidArgument."""
    found = [
        c
        for c in (
            _response_format(body.get("response_format")),
            _structured_outputs(body.get("structured_outputs")),
            *(_guided(name, body.get(name)) for name in _GUIDED),
        )
        if c is not None
    ]
    if len(found) > 1:
        fields = ", ".join(c.field for c in found)
        raise InvalidArgument(f"structured output: set at most one of {fields}")
    return found[0] if found else None


def _response_format(value: Any) -> OutputConstraint | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidArgument("response_format: must be an object")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return OutputConstraint("response_format", ANY_OBJECT)
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise InvalidArgument(
                "response_format.json_schema.schema: a JSON Schema object is required"
            )
        strict = spec.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise InvalidArgument("response_format.json_schema.strict: must be a boolean")
        schema = json.dumps(spec["schema"])
        return OutputConstraint("response_format", Grammar("json_schema", schema, loose=not strict))
    raise InvalidArgument(
        f"response_format.type: must be text, json_object or json_schema, got {kind!r}"
    )


def _structured_outputs(value: Any) -> OutputConstraint | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidArgument("structured_outputs: must be an object")
    keys = [k for k in _STRUCTURED_KEYS if value.get(k) not in (None, False)]
    if len(keys) != 1:
        raise InvalidArgument(
            f"structured_outputs: set exactly one of {', '.join(_STRUCTURED_KEYS)}"
        )
    key = keys[0]
    if key == "json_object":
        if value[key] is not True:
            raise InvalidArgument("structured_outputs.json_object: must be true")
        return OutputConstraint("structured_outputs.json_object", ANY_OBJECT)
    return _guided(f"structured_outputs.{key}", value[key], key)


def _guided(field: str, value: Any, kind: str | None = None) -> OutputConstraint | None:
    if value is None:
        return None
    kind = kind or _GUIDED[field]
    if kind == "json":
        if isinstance(value, dict):
            value = json.dumps(value)
        if not isinstance(value, str):
            raise InvalidArgument(f"{field}: a JSON Schema (object or text) is required")
        return OutputConstraint(field, Grammar("json_schema", value))
    if kind == "choice":
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise InvalidArgument(f"{field}: a list of strings is required")
        return OutputConstraint(field, Grammar("choice", json.dumps(value)))
    if not isinstance(value, str):
        raise InvalidArgument(f"{field}: must be a string")
    return OutputConstraint(field, Grammar("regex" if kind == "regex" else "ebnf", value))


def logit_bias(value: Any) -> tuple[tuple[int, float], ...]:
    """OpenAI's {"token id": bias} as (id, bias) pairs; ranges are the validator's."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise InvalidArgument("logit_bias: must be an object of token id -> bias")
    pairs = []
    for key, bias in value.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit()):
            raise InvalidArgument(f"logit_bias: keys must be token ids, got {key!r}")
        if isinstance(bias, bool) or not isinstance(bias, int | float):
            raise InvalidArgument(f"logit_bias[{key}]: must be a number")
        pairs.append((int(key), float(bias)))
    return tuple(pairs)
