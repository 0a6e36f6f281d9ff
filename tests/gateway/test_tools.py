# ruff: noqa: E501  (tables of cases and recorded outputs: one per line)
"""Tool calling at the gateway: tools and tool_choice read and refused by field, the grammar
that forces named and required calls, calls parsed from recorded outputs of each format
(Hermes `<tool_call>`, Llama-3 JSON), the stream that holds back a call, earlier turns
rendered for a template without tools, and the OpenAI shapes of both answers."""

import json

import pytest

from sarathi_serve.common.errors import InvalidArgument
from sarathi_serve.gateway.generation import Delta
from sarathi_serve.gateway.openai_answers import Choice
from sarathi_serve.gateway.openai_chat import ChatChoices
from sarathi_serve.gateway.openai_protocol import ChatCompletionRequest
from sarathi_serve.gateway.tools import (
    AutoCallStream,
    parse_tool_calls,
    template_messages,
    tool_use,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {}}}
NAMES = {"get_weather", "get_time"}


@pytest.mark.parametrize(
    ("tools", "choice", "message"),
    [
        ([WEATHER], "sometimes", r'^tool_choice: "none", "auto", "required"'),
        ([WEATHER], {"type": "function", "function": {"name": "nope"}}, r"^tool_choice: no tool named 'nope'"),
        (None, "required", r"^tool_choice: needs tools"),
        ({"a": 1}, None, r"^tools: must be a list"),
        ([{"type": "web"}], None, r"^tools\[0\]: must be"),
        ([{"type": "function", "function": {"name": "a b"}}], None, r"^tools\[0\].function.name: 1-64"),
        ([{"type": "function", "function": {"name": "f", "parameters": []}}], None, r"^tools\[0\].function.parameters"),
        ([WEATHER, WEATHER], None, r"^tools: function names must be unique"),
    ],
)  # fmt: skip
def test_tools_and_tool_choice_are_refused_naming_the_field(tools, choice, message):
    with pytest.raises(InvalidArgument, match=message):
        tool_use(tools, choice)


def test_named_and_required_calls_are_forced_by_a_grammar_auto_and_none_are_not():
    named = tool_use([WEATHER, TIME], {"type": "function", "function": {"name": "get_weather"}})
    schema = json.loads(named.constraint().grammar.spec)
    assert schema == WEATHER["function"]["parameters"]
    required = json.loads(tool_use([WEATHER, TIME], "required").constraint().grammar.spec)
    assert required["type"] == "array" and required["minItems"] == 1
    consts = [c["properties"]["name"]["const"] for c in required["items"]["anyOf"]]
    assert consts == ["get_weather", "get_time"] and "maxItems" not in required
    one = json.loads(tool_use([WEATHER], "required", parallel=False).constraint().grammar.spec)
    assert one["maxItems"] == 1
    body = ChatCompletionRequest(messages=[{"role": "user", "content": "Hi"}], tools=[WEATHER],
                                 tool_choice="required", parallel_tool_calls=False)  # fmt: skip
    assert json.loads(body.to_input().sampling.constraint.grammar.spec)["maxItems"] == 1
    assert tool_use([WEATHER], "auto").constraint() is None
    none = tool_use([WEATHER], "none")
    assert none.constraint() is None and none.shown == ()


# Recorded outputs, one per format (Hermes from Qwen2.5 / Hermes-3, Llama-3.1 JSON).
HERMES = (
    "I'll check both.\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
)
LLAMA3 = '{"name": "get_weather", "parameters": {"city": "Rome"}}'
LLAMA3_TAGGED = '<|python_tag|>{"name": "get_time", "parameters": {}}; {"name": "get_weather", "parameters": {"city": "Oslo"}}'


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        (HERMES, "I'll check both.", [("get_weather", {"city": "Paris", "unit": "c"}), ("get_time", {})]),
        (LLAMA3, None, [("get_weather", {"city": "Rome"})]),
        (LLAMA3_TAGGED, None, [("get_time", {}), ("get_weather", {"city": "Oslo"})]),
        ('<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Nice\\"}"}\n</tool_call>', None, [("get_weather", {"city": "Nice"})]),
        ("The weather is fine.", "The weather is fine.", []),
        ('{"name": "launch_rocket", "parameters": {}}', '{"name": "launch_rocket", "parameters": {}}', []),
        ("<tool_call>\n{not json}\n</tool_call>", "<tool_call>\n{not json}\n</tool_call>", []),
        ('{"city": "Paris"}', '{"city": "Paris"}', []),
    ],
)  # fmt: skip
def test_calls_are_parsed_from_each_format_and_anything_else_is_content(text, content, calls):
    got_content, got = parse_tool_calls(text, NAMES)
    assert got_content == content
    assert [(c.name, json.loads(c.arguments)) for c in got] == calls
    assert len({c.id for c in got}) == len(got) and all(c.id.startswith("call_") for c in got)


def test_a_stream_holds_back_what_may_be_a_call():
    stream = AutoCallStream(NAMES)
    pieces = ["Sure", ", let me check. <tool", "_call>\n", HERMES.split("<tool_call>\n", 1)[1]]
    assert [stream.feed(p) for p in pieces] == ["Sure", ", let me check. ", "", ""]
    rest, calls = stream.finish()
    assert rest == "" and [c.name for c in calls] == ["get_weather", "get_time"]

    plain = AutoCallStream(NAMES)
    assert [plain.feed(p) for p in ["  ", "{", "oops} and 1 < 2"]] == ["", "", ""]
    assert plain.finish() == ("  {oops} and 1 < 2", [])
    text = AutoCallStream(NAMES)
    assert [text.feed(p) for p in ["It is <", "b>bold</b>"]] == ["It is ", "<b>bold</b>"]


def test_earlier_turns_and_tools_are_rendered_for_a_template_without_tools():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    ]  # fmt: skip
    out = template_messages(messages, [WEATHER], renders_tools=False)
    assert out[0]["role"] == "system" and out[0]["content"].startswith("Be brief.\n\n")
    assert json.dumps(WEATHER) in out[0]["content"] and "<tools>" in out[0]["content"]
    assert out[2] == {
        "role": "assistant",
        "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    }
    assert out[3] == {"role": "tool", "content": "<tool_response>\n18 C, sunny\n</tool_response>"}
    assert template_messages(messages, [WEATHER], renders_tools=True) is messages


def test_the_tokenized_prompt_shows_the_tools_and_the_earlier_call(tokenizer):
    from sarathi_serve.gateway.validation import RequestValidator

    body = ChatCompletionRequest(
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        tools=[WEATHER],
    )  # fmt: skip
    validator = RequestValidator(tokenizer, "SmolLM2-135M-Instruct", max_model_len=2048)
    text = tokenizer.decode(validator.prepare(body.to_input()).prompt_token_ids)
    assert "get_weather" in text and "<tools>" in text and "<tool_response>\nsunny" in text
    none = ChatCompletionRequest(
        messages=[{"role": "user", "content": "Hi"}], tools=[WEATHER], tool_choice="none"
    )
    assert "<tools>" not in tokenizer.decode(validator.prepare(none.to_input()).prompt_token_ids)


def deltas(*texts, finish="stop"):
    return [
        Delta(t, (), (), finish if i == len(texts) - 1 else None, 0, i + 1)
        for i, t in enumerate(texts)
    ]


def stream(shapes, texts, finish="stop"):
    chunks = [shapes.chunk(0, d, i == 0) for i, d in enumerate(deltas(*texts, finish=finish))]
    return [c for c in chunks if c is not None]


def test_a_named_call_streams_its_arguments_and_answers_as_openai_does():
    use = tool_use([WEATHER], {"type": "function", "function": {"name": "get_weather"}})
    chunks = stream(ChatChoices(use, False), ['{"city": ', '"Paris"}'])
    first = chunks[0]["delta"]
    assert first["role"] == "assistant" and first["content"] is None
    call = first["tool_calls"][0]
    assert call["index"] == 0 and call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": '}
    assert chunks[1]["delta"] == {
        "tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]
    }
    assert chunks[-1]["finish_reason"] == "stop"
    body = ChatChoices(use, False).body(0, Choice(['{"city": "Paris"}'], [], "stop", 5))
    assert body["message"]["content"] is None and body["finish_reason"] == "stop"
    assert body["message"]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
    }


def test_required_and_auto_calls_come_whole_with_finish_reason_tool_calls():
    required = tool_use([WEATHER, TIME], "required")
    text = '[{"name": "get_time", "parameters": {}}, {"name": "get_weather", "parameters": {"city": "Rome"}}]'
    chunks = stream(ChatChoices(required, False), [text[:20], text[20:]])
    assert len(chunks) == 1 and chunks[0]["finish_reason"] == "tool_calls"
    calls = chunks[0]["delta"]["tool_calls"]
    assert [(c["index"], c["function"]["name"]) for c in calls] == [
        (0, "get_time"),
        (1, "get_weather"),
    ]
    assert json.loads(calls[1]["function"]["arguments"]) == {"city": "Rome"}

    auto = tool_use([WEATHER, TIME], "auto")
    chunks = stream(
        ChatChoices(auto, False), ["I'll check both.\n", HERMES[len("I'll check both.\n") :]]
    )
    assert chunks[0]["delta"] == {"role": "assistant", "content": "I'll check both.\n"}
    assert [c["function"]["name"] for c in chunks[-1]["delta"]["tool_calls"]] == [
        "get_weather",
        "get_time",
    ]
    assert chunks[-1]["finish_reason"] == "tool_calls"
    plain = stream(ChatChoices(auto, False), ["It is ", "sunny."])
    assert "".join(c["delta"].get("content", "") for c in plain) == "It is sunny."
    assert plain[-1]["finish_reason"] == "stop"
    body = ChatChoices(auto, False).body(0, Choice([HERMES], [], "stop", 9))
    assert (
        body["message"]["content"] == "I'll check both." and body["finish_reason"] == "tool_calls"
    )
    cut = ChatChoices(required, False).body(0, Choice(['[{"name": "get_t'], [], "length", 9))
    assert (
        cut["message"] == {"role": "assistant", "content": '[{"name": "get_t'}
        and cut["finish_reason"] == "length"
    )
