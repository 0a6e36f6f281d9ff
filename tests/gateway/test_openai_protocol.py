"""The HTTP edge's conversion: an OpenAI body -> GenerateInput, the same one the gRPC
edge makes of the equivalent GenerateRequest (so both are validated alike)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from pydantic import ValidationError

from sarathi_serve.common.errors import InvalidArgument
from sarathi_serve.gateway.generate_input import (
    ChatMessage,
    ChatPrompt,
    GenerateInput,
    SamplingOptions,
    TextPrompt,
    TokenPrompt,
)
from sarathi_serve.gateway.openai_protocol import ChatCompletionRequest, CompletionRequest
from sarathi_serve.gateway.server import generate_input_from_pb
from sarathi_serve.gateway.validation import RequestValidator
from sarathi_serve.protocol import generate_pb2 as gpb

FULL = {
    "model": "m",
    "temperature": 0.7,
    "top_p": 0.9,
    "top_k": 5,
    "min_p": 0.1,
    "seed": 11,
    "stop": ["a", "bc"],
    "stop_token_ids": [3, 4],
    "presence_penalty": 0.3,
    "frequency_penalty": -0.3,
    "repetition_penalty": 1.2,
    "ignore_eos": True,
    "min_tokens": 1,
}


def full_pb(**extra: int) -> gpb.SamplingOptions:
    """FULL, as a gRPC client sends it."""
    return gpb.SamplingOptions(
        **extra,
        temperature=0.7,
        top_p=0.9,
        top_k=5,
        min_p=0.1,
        seed=11,
        stop=["a", "bc"],
        stop_token_ids=[3, 4],
        presence_penalty=0.3,
        frequency_penalty=-0.3,
        repetition_penalty=1.2,
        ignore_eos=True,
        min_tokens=1,
    )


def test_a_completion_body_is_its_grpc_request():
    body = CompletionRequest(prompt="Hello", max_tokens=3, logprobs=2, **FULL)
    sampling = full_pb(max_tokens=3, logprobs=2)
    wire = gpb.GenerateRequest(model="m", prompt="Hello", sampling=sampling)
    assert body.to_inputs() == [generate_input_from_pb(wire)]


def test_a_chat_body_is_its_grpc_request():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    body = ChatCompletionRequest(messages=messages, logprobs=True, top_logprobs=2, **FULL)
    sampling = full_pb(logprobs=2)
    sampling.ClearField("max_tokens")  # unset: as many as the context holds
    turns = [gpb.ChatMessage(role=m["role"], content=m["content"]) for m in messages]
    wire = gpb.GenerateRequest(
        model="m", messages=gpb.ChatMessages(messages=turns), sampling=sampling
    )
    assert body.to_input() == replace(generate_input_from_pb(wire), fill_context=True)


def test_unset_fields_stay_unset():
    (got,) = CompletionRequest(prompt="Hi", max_tokens=None).to_inputs()
    assert got == GenerateInput(TextPrompt("Hi"))
    (got,) = CompletionRequest(prompt="Hi").to_inputs()
    assert got.sampling == SamplingOptions(max_tokens=16)  # OpenAI's default
    chat = ChatCompletionRequest(messages=[{"role": "user"}], max_completion_tokens=5)
    assert chat.to_input() == GenerateInput(
        ChatPrompt((ChatMessage("user", ""),)),
        sampling=SamplingOptions(max_tokens=5),
        fill_context=True,
    )
    chat = ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], logprobs=True)
    assert chat.to_input().sampling.logprobs == 0


def test_prompts_of_each_shape():
    def prompts(prompt):
        return [r.prompt for r in CompletionRequest(prompt=prompt).to_inputs()]

    assert prompts("a") == [TextPrompt("a")]
    assert prompts(["a", "b"]) == [TextPrompt("a"), TextPrompt("b")]
    assert prompts([1, 2]) == [TokenPrompt((1, 2))]
    assert prompts([[1], []]) == [TokenPrompt((1,)), TokenPrompt(())]
    with pytest.raises(InvalidArgument, match=r"^prompt: at most 64 prompts"):
        prompts(["a"] * 65)


def test_floats_are_the_wires_32_bits(tokenizer):
    got = CompletionRequest(prompt="x", temperature=0.7, top_p=1e39).to_inputs()[0].sampling
    assert got.temperature == gpb.SamplingOptions(temperature=0.7).temperature != 0.7
    assert got.top_p == math.inf  # past float32: as protobuf, refused as out of range
    validator = RequestValidator(tokenizer, "m", max_model_len=64)
    with pytest.raises(InvalidArgument, match=r"^top_p: must be in \(0, 1\], got inf$"):
        validator.prepare(CompletionRequest(prompt="x", top_p=1e39).to_inputs()[0])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "\ud800"}, "prompt"),
        ({"prompt": ["ok", "\ud800"]}, "prompt"),
        ({"prompt": "ok", "stop": "\ud800"}, "stop"),
        ({"prompt": "ok", "user": "\ud800"}, "user"),
        ({"prompt": "ok", "model": "\ud800"}, "model"),
        ({"prompt": "ok", "cache_salt": "a\udfffb"}, "cache_salt"),
    ],
)
def test_a_lone_surrogate_is_invalid_argument_naming_its_field(body, field):
    with pytest.raises(InvalidArgument, match=rf"^{field}: not valid Unicode text"):
        CompletionRequest(**body).to_inputs()


def test_a_lone_surrogate_in_a_chat_message_is_invalid_argument():
    body = ChatCompletionRequest(messages=[{"role": "user", "content": "ok \udfff"}])
    with pytest.raises(InvalidArgument, match=r"^messages\[0\]: not valid Unicode text"):
        body.to_input()


def test_priority_reaches_the_prepared_request_on_both_endpoints(tokenizer):
    validator = RequestValidator(tokenizer, "m", max_model_len=64)
    completion = CompletionRequest(prompt="x", priority=-5).to_inputs()[0]
    chat = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], priority=7)
    assert validator.prepare(completion).priority == -5
    assert validator.prepare(chat.to_input()).priority == 7
    assert CompletionRequest(prompt="x").to_inputs()[0].priority is None  # the caller's
    assert generate_input_from_pb(gpb.GenerateRequest(prompt="x", priority=3)).priority == 3
    assert generate_input_from_pb(gpb.GenerateRequest(prompt="x", priority=0)).priority == 0
    assert generate_input_from_pb(gpb.GenerateRequest(prompt="x")).priority is None


@pytest.mark.parametrize("priority", [2**31, -(2**31) - 1, 1.5, "1", True])
def test_a_priority_outside_int32_or_not_an_integer_is_refused(priority):
    with pytest.raises(ValidationError):
        CompletionRequest(prompt="x", priority=priority)
