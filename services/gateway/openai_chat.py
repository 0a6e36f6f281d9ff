"""How a chat choice looks: a streamed delta, or the whole message, with tool calls.

Without tools (or with tool_choice none) a choice is text. With tools its output may be
calls (see tools.py), shaped as OpenAI shapes them:
- whole: `message.tool_calls` [{id, type, function: {name, arguments}}], `content` the
  text outside them (null when none), finish reason `tool_calls` (`stop` for a named
  function, as OpenAI answers a forced call);
- streamed: `delta.tool_calls` [{index, id, type, function: {name, arguments}}] opening
  each call, then `arguments` pieces. A named call streams its arguments as they are
  generated; required and auto calls come once the output is complete (auto streams its
  content up to where a call may begin).
"""

from __future__ import annotations

from typing import Any

from sarathi_serve.gateway.generation import Delta, Logprob
from sarathi_serve.gateway.openai_answers import Choice
from sarathi_serve.gateway.tools import AutoCallStream, ToolCall, ToolUse, new_call_id


class ChatChoices:
    """The chunk and body shapes of one request's chat choices."""

    def __init__(self, use: ToolUse | None, with_logprobs: bool):
        self.use = use if use is not None and use.choice != "none" else None
        self.with_logprobs = with_logprobs
        self._streams: dict[int, _ChoiceStream] = {}

    def chunk(self, index: int, delta: Delta, first: bool) -> dict[str, Any] | None:
        """The choice of one SSE chunk (None: nothing to send for this delta yet)."""
        stream = self._streams.setdefault(index, _ChoiceStream(self.use))
        message = stream.delta(delta)
        if message is None:
            return None
        if not stream.started:
            message = {"role": "assistant", **message}
            stream.started = True
        finish = delta.finish_reason
        return {
            "index": index,
            "delta": message,
            "logprobs": _chat_logprobs(delta.logprobs) if self.with_logprobs else None,
            "finish_reason": _finish(self.use, finish, stream.calls) if finish else None,
        }

    def body(self, index: int, choice: Choice) -> dict[str, Any]:
        text = "".join(choice.text)
        content, calls = self.use.calls(text) if self.use else (text, [])
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = [c.as_openai() for c in calls]
        return {
            "index": index,
            "message": message,
            "logprobs": _chat_logprobs(choice.logprobs) if self.with_logprobs else None,
            "finish_reason": _finish(self.use, choice.finish_reason, calls),
        }


class _ChoiceStream:
    def __init__(self, use: ToolUse | None):
        self.use = use
        self.started = False
        self.calls: list[ToolCall] = []
        self.text = ""  # required: the output so far (auto's stream keeps its own)
        auto = use is not None and use.choice == "auto"
        self.auto = AutoCallStream({t.name for t in use.tools}) if use and auto else None
        self.call_id = new_call_id()

    def delta(self, delta: Delta) -> dict[str, Any] | None:
        use, end = self.use, delta.finish_reason is not None
        if use is None:
            return {"content": delta.text} if delta.text or not self.started else {}
        if use.choice == "named":
            return self._named(delta.text)
        content = ""
        if use.choice == "auto":
            assert self.auto is not None
            content = self.auto.feed(delta.text)
            if end:
                rest, self.calls = self.auto.finish()
                content += rest
        else:
            self.text += delta.text
            if end:
                _, self.calls = use.calls(self.text)
        message: dict[str, Any] = {"content": content} if content else {}
        if self.calls:
            message["tool_calls"] = [
                {"index": i, **c.as_openai()} for i, c in enumerate(self.calls)
            ]
        return message if message or end else None

    def _named(self, text: str) -> dict[str, Any]:
        assert self.use is not None
        call: dict[str, Any] = {"index": 0, "function": {"arguments": text}}
        if not self.started:
            call = {**call, "id": self.call_id, "type": "function"}
            call["function"] = {"name": self.use.named, "arguments": text}
            self.calls = [ToolCall(self.call_id, self.use.named, "")]
            return {"content": None, "tool_calls": [call]}
        return {"tool_calls": [call]}


def _finish(use: ToolUse | None, reason: str | None, calls: list[ToolCall]) -> str | None:
    if reason == "stop" and calls and use is not None and use.choice != "named":
        return "tool_calls"
    return reason


def _chat_logprobs(logprobs: list[Logprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": list(lp.token.encode()),
                "top_logprobs": [
                    {"token": token, "logprob": v, "bytes": list(token.encode())}
                    for _, token, v in lp.top
                ],
            }
            for lp in logprobs
        ]
    }
