"""Tool calling (OpenAI `tools` / `tool_choice`): what to constrain, and the calls in an output.

- `required` and a named function are forced by a grammar, so they work with any model:
  a named call's output is the function's arguments (a JSON object of its parameters
  schema); a required call's output is a JSON array of one or more
  `{"name": ..., "parameters": {...}}` objects, one per call.
- `auto` lets the model choose; its output is parsed for calls in the model family's
  format: Hermes-style `<tool_call>{"name": ..., "arguments": ...}</tool_call>` (Qwen,
  Hermes, SmolLM3 and the fallback prompt below), or Llama-3's bare JSON
  `{"name": ..., "parameters": ...}` (optionally after `<|python_tag|>`, several
  separated by `;`).
- `none`: the tools are not shown to the model and nothing is parsed.

A chat template that does not render `tools` (SmolLM2's) gets them in a system message
in the Hermes format, and the calls and results of earlier turns as its text.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sarathi_serve.common.errors import InvalidArgument
from sarathi_serve.common.sampling import Grammar
from sarathi_serve.gateway.generate_input import OutputConstraint

TOOL_CALL_START = "<tool_call>"
_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_PYTHON_TAG = "<|python_tag|>"
FALLBACK_PROMPT = (
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    "{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{{"name": <function-name>, '
    '"arguments": <args-json-object>}}\n</tool_call>'
)
ANY_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]

    def as_openai(self) -> dict[str, Any]:
        function = {"name": self.name, "description": self.description}
        return {"type": "function", "function": {**function, "parameters": self.parameters}}


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI carries it

    def as_openai(self) -> dict[str, Any]:
        function = {"name": self.name, "arguments": self.arguments}
        return {"id": self.id, "type": "function", "function": function}


@dataclass(frozen=True, slots=True)
class ToolUse:
    """The request's tools and how it lets the model use them."""

    tools: tuple[Tool, ...]
    choice: str  # "none", "auto", "required" or "named"
    named: str = ""  # the function, when choice == "named"
    parallel: bool = True  # OpenAI's parallel_tool_calls: false allows one call only

    @property
    def shown(self) -> tuple[Tool, ...]:
        """The tools the model is told about (none for tool_choice none)."""
        return () if self.choice == "none" else self.tools

    def constraint(self) -> OutputConstraint | None:
        if self.choice == "named":
            tool = next(t for t in self.tools if t.name == self.named)
            schema = json.dumps(tool.parameters or ANY_OBJECT_SCHEMA)
            return OutputConstraint("tool_choice", Grammar("json_schema", schema))
        if self.choice == "required":
            calls = [
                {
                    "type": "object",
                    "properties": {
                        "name": {"const": t.name},
                        "parameters": t.parameters or ANY_OBJECT_SCHEMA,
                    },
                    "required": ["name", "parameters"],
                }
                for t in self.tools
            ]
            array: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": calls}}
            if not self.parallel:
                array["maxItems"] = 1
            return OutputConstraint("tool_choice", Grammar("json_schema", json.dumps(array)))
        return None

    def calls(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """(the content left, the calls) of a whole output."""
        if self.choice == "named":
            return None, [ToolCall(new_call_id(), self.named, text)]
        if self.choice == "required":
            try:
                items = json.loads(text)
            except json.JSONDecodeError:  # cut by max_tokens: no call to return
                return text, []
            return None, [_call(item["name"], item["parameters"]) for item in items]
        if self.choice == "auto":
            return parse_tool_calls(text, {t.name for t in self.tools})
        return text, []


def tool_use(tools: Any, tool_choice: Any, parallel: bool = True) -> ToolUse | None:
    """The request's ToolUse (None without tools), or InvalidArgument naming the field."""
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise InvalidArgument("tool_choice: needs tools")
        return None
    if not isinstance(tools, list):
        raise InvalidArgument("tools: must be a list")
    parsed = tuple(_tool(i, t) for i, t in enumerate(tools))
    names = [t.name for t in parsed]
    if len(set(names)) != len(names):
        raise InvalidArgument("tools: function names must be unique")
    if tool_choice is None or tool_choice in ("none", "auto", "required"):
        return ToolUse(parsed, tool_choice or "auto", parallel=parallel)
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        if name not in names:
            raise InvalidArgument(f"tool_choice: no tool named {name!r}")
        return ToolUse(parsed, "named", name, parallel)
    raise InvalidArgument(
        'tool_choice: "none", "auto", "required" or {"type": "function", "function": {"name"}}'
    )


def parse_tool_calls(text: str, names: set[str]) -> tuple[str | None, list[ToolCall]]:
    """Calls in a free output, Hermes or Llama-3 format; (content, calls). Text that is not
    a well-formed call of a known tool stays content."""
    if TOOL_CALL_START in text:
        calls = [c for c in (_parsed_call(m, names) for m in _HERMES.findall(text)) if c]
        if calls:
            content = text[: text.index(TOOL_CALL_START)].strip()
            return content or None, calls
    body = text.strip().removeprefix(_PYTHON_TAG).strip()
    if body.startswith("{"):
        parsed = [_parsed_call(part, names) for part in body.split(";")]
        bare = [c for c in parsed if c is not None]
        if bare and len(bare) == len(parsed):
            return None, bare
    return text, []


class AutoCallStream:
    """tool_choice auto, streamed: content goes out as it comes until it may be a call
    (`<tool_call>` anywhere, or an output that opens with `{` or `<|python_tag|>`); from
    there it is held, and `finish` parses it: calls, or the held text as content."""

    def __init__(self, names: set[str]):
        self.names = names
        self.text = ""
        self.sent = 0  # characters of text already streamed as content
        self.holding = False

    def feed(self, piece: str) -> str:
        """The content that can go out now."""
        self.text += piece
        if self.holding:
            return ""
        head = self.text.lstrip()
        if self.sent == 0 and any(o.startswith(head) or head.startswith(o) for o in _OPENERS):
            return ""  # empty so far, or the start of a bare JSON call: wait and see
        start = self.text.find(TOOL_CALL_START, self.sent)
        if start >= 0:
            self.holding = True
        else:  # hold back a tail that may be the start of <tool_call>
            start = len(self.text) - _partial_suffix(self.text, TOOL_CALL_START)
        out, self.sent = self.text[self.sent : start], max(self.sent, start)
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(content not sent yet, the calls) once the output ended."""
        _, calls = parse_tool_calls(self.text, self.names)
        if calls:
            return "", calls
        return self.text[self.sent :], []


_OPENERS = (TOOL_CALL_START, _PYTHON_TAG, "{")


def _partial_suffix(text: str, word: str) -> int:
    """The length of the longest end of `text` that begins `word` (and is not all of it)."""
    for n in range(min(len(word) - 1, len(text)), 0, -1):
        if word.startswith(text[-n:]):
            return n
    return 0


def template_messages(
    messages: list[dict[str, Any]], tools: Sequence[dict[str, Any]], renders_tools: bool
) -> list[dict[str, Any]]:
    """The conversation for a template that does not render tools: the tools in a system
    message, earlier calls and results as Hermes-format text."""
    if renders_tools:
        return messages
    out = []
    for m in messages:
        calls = m.get("tool_calls") or []
        if calls:
            text = "\n".join(
                f'{TOOL_CALL_START}\n{{"name": {json.dumps(c["function"]["name"])}, '
                f'"arguments": {c["function"]["arguments"]}}}\n</tool_call>'
                for c in calls
            )
            m = {"role": m["role"], "content": ((m.get("content") or "") + "\n" + text).strip()}
        elif m["role"] == "tool":
            m = {"role": "tool", "content": f"<tool_response>\n{m['content']}\n</tool_response>"}
        out.append({"role": m["role"], "content": m.get("content") or ""})
    if tools:
        prompt = FALLBACK_PROMPT.format(tools="\n".join(json.dumps(t) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + prompt}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _call(name: str, arguments: Any) -> ToolCall:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ToolCall(new_call_id(), name, text)


def _parsed_call(text: str, names: set[str]) -> ToolCall | None:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return _call(obj["name"], arguments)


def _tool(index: int, value: Any) -> Tool:
    field = f"tools[{index}]"
    if not isinstance(value, dict) or value.get("type") != "function":
        raise InvalidArgument(f'{field}: must be {{"type": "function", "function": {{...}}}}')
    function = value.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidArgument(f"{field}.function.name: a string is required")
    name = function["name"]
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise InvalidArgument(f"{field}.function.name: 1-64 letters, digits, _ . or -")
    parameters = function.get("parameters")
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, dict):
        raise InvalidArgument(f"{field}.function.parameters: must be a JSON Schema object")
    description = function.get("description") or ""
    if not isinstance(description, str):
        raise InvalidArgument(f"{field}.function.description: must be a string")
    return Tool(name, description, parameters)
