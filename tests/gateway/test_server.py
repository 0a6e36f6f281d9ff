"""The gRPC edge's conversion: GenerateRequest -> GenerateInput, unset fields as None."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from sarathi_serve.gateway.generate_input import (
    ChatMessage,
    ChatPrompt,
    GenerateInput,
    SamplingOptions,
    TextPrompt,
    TokenPrompt,
)
from sarathi_serve.gateway.server import SERVICE_NAME, generate_input_from_pb
from sarathi_serve.protocol import generate_pb2 as gpb

U32 = st.integers(0, 2**32 - 1)
F32 = st.floats(width=32, allow_nan=False)  # NaN != NaN: equality would not hold
PROMPTS = st.none() | st.one_of(
    st.builds(TextPrompt, st.text(max_size=10)),
    st.builds(
        ChatPrompt,
        st.lists(st.builds(ChatMessage, st.text(max_size=5), st.text(max_size=10)), max_size=3).map(
            tuple
        ),
    ),
    st.builds(TokenPrompt, st.lists(U32, max_size=5).map(tuple)),
)
SAMPLING = st.builds(
    SamplingOptions,
    max_tokens=st.none() | U32,
    temperature=st.none() | F32,
    top_p=st.none() | F32,
    top_k=U32,
    seed=st.none() | st.integers(0, 2**64 - 1),
    stop_token_ids=st.lists(U32, max_size=4).map(tuple),
    ignore_eos=st.booleans(),
    min_tokens=U32,
    min_p=F32,
    repetition_penalty=st.none() | F32,
    presence_penalty=F32,
    frequency_penalty=F32,
    logprobs=st.none() | U32,
    stop=st.lists(st.text(max_size=5), max_size=3).map(tuple),
    logit_bias=st.dictionaries(U32, F32, max_size=3).map(lambda d: tuple(sorted(d.items()))),
)
INPUTS = st.builds(GenerateInput, PROMPTS, st.text(max_size=8), SAMPLING)


def _to_pb(request: GenerateInput) -> gpb.GenerateRequest:
    """The inverse, as a client writes it: an optional field is set only when not None."""
    msg = gpb.GenerateRequest(model=request.model)
    match request.prompt:
        case TextPrompt(text):
            msg.prompt = text
        case ChatPrompt(messages):
            msg.messages.SetInParent()  # an empty conversation is still a conversation
            turns = [gpb.ChatMessage(role=m.role, content=m.content) for m in messages]
            msg.messages.messages.extend(turns)
        case TokenPrompt(token_ids):
            msg.prompt_token_ids.SetInParent()
            msg.prompt_token_ids.ids.extend(token_ids)
    for name, value in dataclasses.asdict(request.sampling).items():
        if name == "logit_bias":
            msg.sampling.logit_bias.update(dict(value))
        elif name == "constraint":
            assert value is None  # `structured`: see tests/gateway/test_structured_protocol.py
        elif isinstance(value, tuple):
            getattr(msg.sampling, name).extend(value)
        elif value is not None:
            setattr(msg.sampling, name, value)
    return msg


@given(INPUTS)
def test_round_trip_through_the_wire(request):
    wire = gpb.GenerateRequest.FromString(_to_pb(request).SerializeToString())
    assert generate_input_from_pb(wire) == request


def test_unset_optional_fields_are_none_and_set_defaults_are_kept():
    bare = generate_input_from_pb(gpb.GenerateRequest(prompt="hi"))
    assert bare == GenerateInput(TextPrompt("hi"))
    assert bare.sampling.temperature is None and bare.sampling.max_tokens is None
    zeros = gpb.SamplingOptions(temperature=0.0, max_tokens=0, top_p=0.0, logprobs=0, seed=0)
    got = generate_input_from_pb(gpb.GenerateRequest(prompt="hi", sampling=zeros)).sampling
    assert (got.temperature, got.max_tokens, got.top_p, got.logprobs, got.seed) == (0, 0, 0, 0, 0)
    assert got.repetition_penalty is None


def test_which_prompt_was_sent():
    assert generate_input_from_pb(gpb.GenerateRequest()).prompt is None
    assert generate_input_from_pb(gpb.GenerateRequest(prompt="")).prompt == TextPrompt("")
    empty_chat = gpb.GenerateRequest(messages=gpb.ChatMessages())
    assert generate_input_from_pb(empty_chat).prompt == ChatPrompt(())
    no_ids = gpb.GenerateRequest(prompt_token_ids=gpb.TokenIds())
    assert generate_input_from_pb(no_ids).prompt == TokenPrompt(())


def test_service_name_is_the_proto_service():
    assert SERVICE_NAME == "sarathi.v1.Generation"
