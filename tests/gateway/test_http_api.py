"""The gateway's public edges over real schedulers and null workers: validation
matrix, property-based fuzzing of both APIs, back-pressure, auth, cancellation,
metrics and A/B routing. (The real model's outputs: tests/e2e/test_openai.py.)"""

from __future__ import annotations

import json
import ssl
import statistics
import subprocess
import sys
import time

import grpc
import httpx2 as httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sarathi_serve.protocol import generate_pb2 as gpb
from sarathi_serve.protocol import generate_pb2_grpc as gpb_grpc
from tests.gateway.stack import NullStack

MODEL = "SmolLM2-135M-Instruct"


def _post(http: httpx.Client, path: str, body: object) -> httpx.Response:
    raw = body if isinstance(body, str) else json.dumps(body)
    return http.post(path, content=raw, headers={"content-type": "application/json"})


OK = {"prompt": "Hello", "max_tokens": 2}
CHAT_OK = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
TOO_LONG = {"prompt": "hello " * 9000, "max_tokens": 2}

# (path, body, status, param named in the error)
BAD_BODIES = [
    ("/v1/completions", "{bad", 400, "body"),
    ("/v1/completions", "[]", 400, "body"),
    ("/v1/completions", {}, 400, "prompt"),
    ("/v1/completions", {"prompt": 5}, 400, "prompt"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt"),
    ("/v1/completions", {"prompt": []}, 400, "prompt"),
    ("/v1/completions", {"prompt": [10**12]}, 400, "prompt"),
    ("/v1/completions", {"prompt": [60000]}, 400, "prompt_token_ids"),
    ("/v1/completions", TOO_LONG, 400, "prompt"),
    ("/v1/completions", {**OK, "model": "gpt-4"}, 404, "model"),
    ("/v1/completions", {**OK, "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {**OK, "temperature": -0.5}, 400, "temperature"),
    ("/v1/completions", {**OK, "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {**OK, "top_p": 1.5}, 400, "top_p"),
    ("/v1/completions", {**OK, "top_k": -2}, 400, "top_k"),
    ("/v1/completions", {**OK, "min_p": 1.5}, 400, "min_p"),
    ("/v1/completions", {**OK, "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {**OK, "max_tokens": -1}, 400, "max_tokens"),
    ("/v1/completions", {**OK, "max_tokens": "5"}, 400, "max_tokens"),
    ("/v1/completions", {**OK, "max_tokens": 2.5}, 400, "max_tokens"),
    ("/v1/completions", {**OK, "max_tokens": 10**9}, 400, "max_tokens"),  # past the context
    ("/v1/chat/completions", {**CHAT_OK, "max_tokens": 8192}, 400, "max_tokens"),
    ("/v1/completions", {**OK, "top_k": 10**9}, 400, "top_k"),
    ("/v1/completions", {**OK, "user": "u" * 257}, 400, "user"),
    ("/v1/completions", {**OK, "seed": -1}, 400, "seed"),
    ("/v1/completions", {**OK, "n": 0}, 400, "n"),
    ("/v1/completions", {**OK, "n": 17}, 400, "n"),
    ("/v1/completions", {**OK, "presence_penalty": 3}, 400, "presence_penalty"),
    ("/v1/completions", {**OK, "frequency_penalty": -3}, 400, "frequency_penalty"),
    ("/v1/completions", {**OK, "repetition_penalty": 0}, 400, "repetition_penalty"),
    ("/v1/completions", {**OK, "logprobs": 21}, 400, "logprobs"),
    ("/v1/completions", {**OK, "stop": [str(i) for i in range(17)]}, 400, "stop"),
    ("/v1/completions", {**OK, "stop": [""]}, 400, "stop[0]"),
    ("/v1/completions", {**OK, "stop": 5}, 400, "stop"),
    ("/v1/completions", {**OK, "min_tokens": 3}, 400, "min_tokens"),
    ("/v1/completions", {**OK, "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {**OK, "stream_options": {"include_usage": 1}}, 400,
     "stream_options.include_usage"),
    ("/v1/completions", {**OK, "logit_bias": {"1": 500}}, 400, "logit_bias[1]"),
    ("/v1/completions", {**OK, "logit_bias": {"x": 5}}, 400, "logit_bias"),
    ("/v1/completions", {**OK, "best_of": 3}, 400, "best_of"),
    ("/v1/completions", {**OK, "suffix": "x"}, 400, "suffix"),
    ("/v1/completions", {**OK, "echo": True, "logprobs": 1}, 400, "echo"),
    ("/v1/chat/completions", {"max_tokens": 2}, 400, "messages"),
    ("/v1/chat/completions", {**CHAT_OK, "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {**CHAT_OK, "messages": [{"role": "robot"}]}, 400, "messages[0].role"),
    ("/v1/chat/completions", {**CHAT_OK, "messages": [{"role": "user", "content": 5}]}, 400,
     "messages[0].content"),
    ("/v1/chat/completions", {**CHAT_OK, "tools": [{"type": "function"}]}, 400,
     "tools[0].function.name"),
    ("/v1/chat/completions", {**CHAT_OK, "tool_choice": "required"}, 400, "tool_choice"),
    ("/v1/chat/completions", {**CHAT_OK, "top_logprobs": 2}, 400, "top_logprobs"),
    ("/v1/chat/completions", {**CHAT_OK, "logprobs": True, "top_logprobs": 99}, 400, "logprobs"),
    ("/v1/chat/completions", {**CHAT_OK, "response_format": {"type": "xml"}}, 400,
     "response_format.type"),
    ("/v1/chat/completions", {**CHAT_OK, "guided_regex": "a("}, 400, "guided_regex"),
    # lone surrogates ("\ud800" is valid JSON, not Unicode text): 400, never 500
    ("/v1/completions", {**OK, "prompt": "\ud800"}, 400, "prompt"),
    ("/v1/completions", {**OK, "stop": ["ok", "a\udfff"]}, 400, "stop"),
    ("/v1/completions", {**OK, "user": "\ud800"}, 400, "user"),
    ("/v1/completions", {**OK, "model": "\ud800"}, 400, "model"),
    ("/v1/chat/completions", {**CHAT_OK, "messages": [{"role": "user", "content": "\ud83d"}]},
     400, "messages[0]"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "status", "param"), BAD_BODIES)
def test_bad_http_requests_name_the_field(http, path, body, status, param):
    response = _post(http, path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["message"].startswith(param), error
    assert error["type"] in ("invalid_request_error", "not_found_error")


@pytest.mark.parametrize("request_id", ["x" * 8000, "two\tfields", "line\x7fdel"])
def test_a_request_id_header_out_of_bounds_is_refused(http, request_id):
    response = http.post("/v1/completions", json=OK, headers={"x-request-id": request_id})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith("x-request-id: ")


def test_a_bad_priority_header_is_refused_on_both_edges(http, grpc_stub):
    response = http.post("/v1/completions", json=OK, headers={"x-sarathi-priority": "soon"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith("x-sarathi-priority: ")
    request = gpb.GenerateRequest(prompt="hi", sampling=gpb.SamplingOptions(max_tokens=1))
    with pytest.raises(grpc.RpcError) as error:
        list(grpc_stub.Generate(request, metadata=[("x-sarathi-priority", "1e9")], timeout=30))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("x-sarathi-priority: ")


def test_unknown_paths_and_methods_answer_openais_error_shape(http):
    for response, status in (
        (_post(http, "/v1/nothing", OK), 404),
        (http.get("/v1/completions"), 405),
    ):
        assert response.status_code == status, response.text
        _assert_error_shape(response)


def test_body_over_the_size_limit_is_refused(http):
    response = _post(http, "/v1/completions", {"prompt": "a" * (5 << 20)})
    assert response.status_code == 413
    assert response.json()["error"]["param"] == "body"


def test_an_idle_connection_outlives_a_client_pools_keep_alive(stack):
    """A pooled connection idle for 6 s is still open (uvicorn's default closed it after
    5 s, the same as httpx's pool expiry: a client reusing it at that moment got
    "Server disconnected without sending a response")."""
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(stack.base_url)
    if url.scheme != "http":
        pytest.skip("the stack serves TLS")
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        assert connection.getresponse().read() and connection.sock is not None
        local = connection.sock.getsockname()
        time.sleep(6)
        connection.request("GET", "/metrics")
        assert connection.getresponse().status == 200
        assert connection.sock.getsockname() == local, "the connection was reopened"
    finally:
        connection.close()


def test_the_keep_alive_is_a_setting(monkeypatch):
    from sarathi_serve.gateway.config import GatewayConfig

    monkeypatch.setenv("SARATHI_GATEWAY_HTTP_KEEP_ALIVE_S", "120")
    assert GatewayConfig.from_args([]).http_keep_alive_s == 120
    with pytest.raises(ValueError, match="http_keep_alive_s"):
        GatewayConfig(http_keep_alive_s=0)


def _grpc_code(stub, request: gpb.GenerateRequest) -> tuple[grpc.StatusCode, str]:
    try:
        list(stub.Generate(request, timeout=30))
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


S = gpb.SamplingOptions
BAD_GRPC = [
    (gpb.GenerateRequest(), "prompt"),
    (gpb.GenerateRequest(prompt=""), "prompt"),
    (gpb.GenerateRequest(prompt="hi", sampling=S(max_tokens=0)), "max_tokens"),
    (gpb.GenerateRequest(prompt="hi", sampling=S(temperature=-1)), "temperature"),
    (gpb.GenerateRequest(prompt="hi", sampling=S(top_p=float("nan"))), "top_p"),
    (gpb.GenerateRequest(prompt="hi", sampling=S(min_p=2)), "min_p"),
    (gpb.GenerateRequest(prompt="hi", sampling=S(logprobs=21)), "logprobs"),
    (gpb.GenerateRequest(prompt="hi", sampling=S(max_tokens=2, min_tokens=3)), "min_tokens"),
    (gpb.GenerateRequest(prompt="hi", sampling=S(stop=["x"] * 17)), "stop"),
    (gpb.GenerateRequest(prompt="hi", sampling=S(stop=[""])), "stop[0]"),
    (gpb.GenerateRequest(prompt_token_ids=gpb.TokenIds(ids=[60000])), "prompt_token_ids"),
    (gpb.GenerateRequest(prompt="hello " * 9000), "prompt"),
    (gpb.GenerateRequest(prompt="hi", sampling=S(max_tokens=10**9)), "max_tokens"),
    (gpb.GenerateRequest(prompt="hi", sampling=S(top_k=10**9)), "top_k"),
    (gpb.GenerateRequest(prompt="hi", request_id="x" * 100_000), "request_id"),
    (gpb.GenerateRequest(prompt="hi", request_id="a\nb"), "request_id"),
    (gpb.GenerateRequest(prompt="hi", user="u" * 257), "user"),
    (
        gpb.GenerateRequest(
            messages=gpb.ChatMessages(messages=[gpb.ChatMessage(role="robot", content="x")])
        ),
        "messages[0].role",
    ),
]


@pytest.mark.parametrize(("request_", "field"), BAD_GRPC)
def test_bad_grpc_requests_name_the_field(grpc_stub, request_, field):
    code, details = _grpc_code(grpc_stub, request_)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(field), details


@pytest.mark.parametrize(
    "raw",
    [
        b"\x1a\x02\xff\xfe",  # prompt (field 3): bytes that are not UTF-8
        b"\x12\x01\xc3" + b"\x1a\x02hi",  # model (field 2): a cut multi-byte character
        b"\x1a\x05hello\x30",  # a truncated message: field 6's tag, no value
    ],
)
def test_a_grpc_request_that_does_not_parse_is_invalid_argument(stack, raw):
    with grpc.insecure_channel(stack.grpc_addr) as channel:
        call = channel.unary_stream(
            f"/{gpb.DESCRIPTOR.services_by_name['Generation'].full_name}/Generate",
            request_serializer=lambda data: data,
            response_deserializer=gpb.GenerateResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as error:
            list(call(raw, timeout=30))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value
    assert error.value.details().startswith("request: "), error.value.details()


def test_unknown_model_is_not_found(grpc_stub):
    code, _ = _grpc_code(grpc_stub, gpb.GenerateRequest(prompt="hi", model="gpt-4"))
    assert code == grpc.StatusCode.NOT_FOUND


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
# Output length stays tiny (or invalid) so that valid bodies finish at once.
MAX_TOKENS = st.integers(-2, 4) | st.sampled_from([None, "3", 2.5, True, 2**40])
PARAMS = {
    name: JSON
    | st.integers(-(2**65), 2**65)
    | st.floats()
    | st.lists(st.text(max_size=5) | st.integers(0, 70000), max_size=18)
    for name in (
        "temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids", "n",
        "presence_penalty", "frequency_penalty", "repetition_penalty", "logprobs", "echo",
        "user", "ignore_eos", "min_tokens", "stream", "stream_options", "model", "best_of",
        "top_logprobs", "logit_bias",
    )
}  # fmt: skip
# Structured output: plausible shapes with hostile contents (schemas, regexes, grammars)
GRAMMAR_TEXT = st.text(max_size=12) | st.sampled_from(["a(", "[", "root ::= x", "\ud800", "(a*)*b"])
SCHEMA = JSON | st.sampled_from(
    [{"type": "nonsense"}, {"$ref": "#"}, {"type": "string", "pattern": "("}]
)
PARAMS.update(
    response_format=JSON
    | st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])},
        optional={
            "json_schema": st.fixed_dictionaries({"schema": SCHEMA}, optional={"strict": JSON})
        },
    ),
    structured_outputs=JSON
    | st.dictionaries(
        st.sampled_from(["json", "regex", "choice", "grammar", "json_object"]),
        SCHEMA | GRAMMAR_TEXT | st.lists(GRAMMAR_TEXT, max_size=3),
        max_size=2,
    ),
    guided_regex=GRAMMAR_TEXT | JSON,
    guided_choice=st.lists(GRAMMAR_TEXT, max_size=3) | JSON,
    guided_json=SCHEMA,
    guided_grammar=GRAMMAR_TEXT | JSON,
    logit_bias=JSON
    | st.dictionaries(st.sampled_from(["0", "17", "49151", "49152", "-1", "x"]), JSON),
    tools=JSON
    | st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["function", "x"])},
            optional={
                "function": st.fixed_dictionaries(
                    {"name": st.sampled_from(["f", "g", "a b", ""]) | JSON},
                    optional={"parameters": SCHEMA, "description": JSON},
                )
            },
        ),
        max_size=3,
    ),
    tool_choice=JSON
    | st.sampled_from(["none", "auto", "required", {"type": "function", "function": {"name": "f"}}])
    | st.just({"type": "function", "function": {"name": "g"}}),
)  # fmt: skip
COMPLETION = st.fixed_dictionaries(
    {
        "prompt": st.text(max_size=30) | st.lists(st.integers(-1, 70000), max_size=5) | JSON,
        "max_tokens": MAX_TOKENS,
    },
    optional=PARAMS,
)
CHAT = st.fixed_dictionaries(
    {
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]) | JSON},
                optional={
                    "content": st.text(max_size=20) | JSON,
                    "tool_call_id": st.text(max_size=5) | JSON,
                    "tool_calls": JSON
                    | st.lists(
                        st.fixed_dictionaries(
                            {
                                "function": st.fixed_dictionaries(
                                    {
                                        "name": st.text(max_size=5),
                                        "arguments": st.text(max_size=8) | JSON,
                                    }
                                )
                            },
                            optional={"id": st.text(max_size=5) | JSON},
                        ),
                        max_size=2,
                    ),
                },
            ),
            max_size=3,
        )
        | JSON,
        "max_tokens": MAX_TOKENS,
    },
    optional={**PARAMS, "max_completion_tokens": MAX_TOKENS},
)

# Bodies of valid values (some combinations are still refused, e.g. echo with
# logprobs): without them nearly every random body is a 400, and the success
# shape would go unchecked.
VALID_COMMON = {
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0.05, 1),
    "seed": st.integers(0, 2**63 - 1),
    "stop": st.text(min_size=1, max_size=3) | st.lists(st.text(min_size=1, max_size=3), max_size=3),
    "n": st.integers(1, 3),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "user": st.text(max_size=8),
}
VALID_COMPLETION = st.fixed_dictionaries(
    {
        "prompt": st.text(min_size=1, max_size=20)
        | st.lists(st.integers(17, 49151), min_size=1, max_size=5),
        "max_tokens": st.integers(1, 4),
    },
    optional={
        **VALID_COMMON,
        "top_k": st.integers(-1, 50),
        "min_p": st.floats(0, 1),
        "stop_token_ids": st.lists(st.integers(0, 49151), max_size=3),
        "repetition_penalty": st.floats(0.5, 2),
        "ignore_eos": st.booleans(),
        "logprobs": st.integers(0, 5),
        "echo": st.booleans(),
        "logit_bias": st.dictionaries(
            st.integers(0, 49151).map(str), st.floats(-100, 100), max_size=3
        ),
        "structured_outputs": st.sampled_from([{"regex": "[a-z]+"}, {"choice": ["a", "b"]}]),
    },
)
VALID_CHAT = st.fixed_dictionaries(
    {
        "messages": st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.sampled_from(["user", "system", "assistant"]),
                    "content": st.text(max_size=20),
                }
            ),
            min_size=1,
            max_size=3,
        ),
        "max_tokens": st.integers(1, 4),
    },
    optional={
        **VALID_COMMON,
        "logprobs": st.booleans(),
        "top_logprobs": st.integers(0, 5),
        "max_completion_tokens": st.integers(1, 4),
    },
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
    body=COMPLETION | CHAT | JSON | VALID_COMPLETION | VALID_CHAT,
)
def test_random_http_bodies_never_get_a_server_error(stack, http, path, body):
    if isinstance(body, dict) and isinstance(body.get("n"), int) and body.get("n", 1) > 1:
        body["max_tokens"] = 1  # bounded work even when valid
    raw = json.dumps(body)  # NaN and Infinity included: Python's json reads them
    response = http.post(path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code in (200, 400, 404), (body, response.text)
    if response.status_code == 200:
        _assert_success_shape(path, response)
    else:
        _assert_error_shape(response)


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def _assert_error_shape(response: httpx.Response) -> None:
    """Every refusal is OpenAI's error body, exactly: {"error": {message, type, param, code}}."""
    payload = response.json()
    assert set(payload) == {"error"}, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["type"] == ERROR_TYPES[response.status_code], error
    assert error["code"] == response.status_code, error
    assert error["param"] is None or (
        isinstance(error["param"], str) and error["message"].startswith(error["param"])
    ), error


def _assert_success_shape(path: str, response: httpx.Response) -> None:
    """A 200 is a completion (or chat completion) body, or an SSE stream of its chunks."""
    chat = path == "/v1/chat/completions"
    assert response.headers["x-sarathi-variant"] == "default"
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [line for line in response.text.split("\n\n") if line]
        assert events[-1] == "data: [DONE]", events[-3:]
        chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
        assert chunks and all(e.startswith("data: ") for e in events), events[:3]
        for chunk in chunks:
            assert "error" not in chunk, chunk
            assert chunk["object"] == ("chat.completion.chunk" if chat else "text_completion")
            assert chunk["id"] == response.headers["x-request-id"] and chunk["model"] == MODEL
            for choice in chunk["choices"]:
                assert isinstance(choice["index"], int) and "logprobs" in choice, choice
                assert choice["finish_reason"] in (None, "stop", "length"), choice
                text = choice["delta"].get("content", "") if chat else choice["text"]
                assert isinstance(text, str), choice
        ends = [c for chunk in chunks for c in chunk["choices"] if c["finish_reason"]]
        assert sorted(c["index"] for c in ends) == list(range(len(ends))), ends
        return
    answer = response.json()
    assert answer["object"] == ("chat.completion" if chat else "text_completion"), answer
    assert answer["id"] == response.headers["x-request-id"] and answer["model"] == MODEL
    assert isinstance(answer["created"], int)
    choices = answer["choices"]
    assert [c["index"] for c in choices] == list(range(len(choices))) and choices, answer
    for choice in choices:
        assert choice["finish_reason"] in ("stop", "length"), choice
        assert "logprobs" in choice, choice
        if chat:
            assert choice["message"]["role"] == "assistant", choice
            assert isinstance(choice["message"]["content"], str), choice
        else:
            assert isinstance(choice["text"], str), choice
    usage = answer["usage"]
    assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens"}, usage
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] >= len(choices), usage
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], usage


FLOATS = st.floats(width=32)
SAMPLING = st.builds(
    gpb.SamplingOptions,
    max_tokens=st.integers(0, 3),
    temperature=FLOATS,
    top_p=FLOATS,
    top_k=st.integers(0, 2**32 - 1),
    seed=st.integers(0, 2**64 - 1),
    stop_token_ids=st.lists(st.integers(0, 2**32 - 1), max_size=70),
    ignore_eos=st.booleans(),
    min_tokens=st.integers(0, 2**32 - 1),
    min_p=FLOATS,
    repetition_penalty=FLOATS,
    presence_penalty=FLOATS,
    frequency_penalty=FLOATS,
    logprobs=st.integers(0, 2**32 - 1),
    stop=st.lists(st.text(max_size=8), max_size=18),
    logit_bias=st.dictionaries(st.integers(0, 2**32 - 1), FLOATS, max_size=4),
    structured=st.builds(gpb.StructuredOutput, regex=st.text(max_size=8))
    | st.builds(gpb.StructuredOutput, json_schema=st.text(max_size=20), loose=st.booleans())
    | st.builds(
        gpb.StructuredOutput,
        choice=st.builds(gpb.Choices, values=st.lists(st.text(max_size=4), max_size=3)),
    )
    | st.builds(gpb.StructuredOutput, grammar=st.text(max_size=12))
    | st.builds(gpb.StructuredOutput),
)
GRPC_REQUESTS = st.one_of(
    st.builds(gpb.GenerateRequest, prompt=st.text(max_size=30), sampling=SAMPLING),
    st.builds(
        gpb.GenerateRequest,
        prompt_token_ids=st.builds(
            gpb.TokenIds, ids=st.lists(st.integers(0, 2**32 - 1), max_size=5)
        ),
        sampling=SAMPLING,
        model=st.sampled_from(["", MODEL, "other"]),
    ),
    st.builds(
        gpb.GenerateRequest,
        messages=st.builds(
            gpb.ChatMessages,
            messages=st.lists(
                st.builds(
                    gpb.ChatMessage,
                    role=st.sampled_from(["user", "x", ""]),
                    content=st.text(max_size=10),
                ),
                max_size=3,
            ),
        ),
        sampling=SAMPLING,
    ),
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=GRPC_REQUESTS)
def test_random_grpc_requests_never_get_a_server_error(grpc_stub, request):
    code, details = _grpc_code(grpc_stub, request)
    assert code in (
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
    ), (request, code, details)


def test_still_serving_after_the_fuzzing(stack, http):
    assert stack.alive
    response = _post(http, "/v1/completions", OK)
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 2


def test_metrics_carry_model_and_variant(stack, http):
    assert _post(http, "/v1/completions", OK).status_code == 200
    text = http.get("/metrics").text
    for series in (
        "sarathi_time_to_first_token_seconds_bucket",
        "sarathi_inter_token_latency_seconds_bucket",
        "sarathi_e2e_request_latency_seconds_bucket",
        "sarathi_requests_total",
        "sarathi_generation_tokens_total",
    ):
        assert f"{series}{{" in text, series
    assert f'model="{MODEL}"' in text and 'variant="default"' in text


def _open_stream(base_url: str, headers: dict[str, str] | None = None):
    """A streaming request that runs until closed; returns (client, response) once admitted."""
    client = httpx.Client(base_url=base_url, timeout=30)
    body = {"prompt": "Hello", "max_tokens": 8000, "ignore_eos": True, "stream": True}
    request = client.build_request("POST", "/v1/completions", json=body, headers=headers)
    response = client.send(request, stream=True)
    assert response.status_code == 200, response.read()
    lines = response.iter_lines()  # kept: dropping it would close the stream
    next(lines)  # the first token arrived: it runs
    return client, response, lines


def _wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_full_gateway_answers_429_and_disconnects_free_the_requests(tmp_path, default_model_dir):
    stack = NullStack(tmp_path, "--max-pending-requests", "2")
    try:
        streams = [_open_stream(stack.base_url) for _ in range(2)]
        assert stack.stats().num_running == 2
        refused = httpx.post(f"{stack.base_url}/v1/completions", json=OK, timeout=10)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        with grpc.insecure_channel(stack.grpc_addr) as channel:
            code, _ = _grpc_code(gpb_grpc.GenerationStub(channel), gpb.GenerateRequest(prompt="hi"))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        for client, response, _ in streams:  # the clients go away mid-stream
            response.close()
            client.close()
        stats = stack.stats
        assert _wait_until(lambda: stats().num_running == 0 and stats().num_waiting == 0)
        assert stack.stats().num_free_kv_blocks == stack.stats().num_total_kv_blocks
        assert (
            httpx.post(f"{stack.base_url}/v1/completions", json=OK, timeout=10).status_code == 200
        )
    finally:
        stack.stop()


def test_grpc_cancel_frees_the_request(stack):
    with grpc.insecure_channel(stack.grpc_addr) as channel:
        stub = gpb_grpc.GenerationStub(channel)
        call = stub.Generate(
            gpb.GenerateRequest(prompt="hi", sampling=S(max_tokens=8000, ignore_eos=True))
        )
        next(call)
        assert stack.stats().num_running == 1
        call.cancel()
    assert _wait_until(lambda: stack.stats().num_running == 0)


def test_a_non_streaming_client_that_gives_up_frees_its_request_quietly(stack):
    body = {"prompt": "hi", "max_tokens": 8000, "ignore_eos": True}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{stack.base_url}/v1/completions", json=body, timeout=0.5)
    assert _wait_until(lambda: stack.stats().num_running == 0)
    time.sleep(0.5)  # the gateway has logged what it would
    log = (stack.logs / "gateway.log").read_text()
    assert "Traceback" not in log and "InvalidStateError" not in log, log[-3000:]


def test_api_keys_gate_both_edges(tmp_path, default_model_dir):
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nk-one\nk-two  # rotated in\n")
    stack = NullStack(tmp_path, "--api-keys-file", str(keys))
    try:
        url = f"{stack.base_url}/v1/completions"
        assert httpx.post(url, json=OK).status_code == 401
        wrong = httpx.post(url, json=OK, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["type"] == "authentication_error"
        assert httpx.get(f"{stack.base_url}/v1/models").status_code == 401
        assert httpx.get(f"{stack.base_url}/metrics").status_code == 200  # scrapers need no key
        with grpc.insecure_channel(stack.grpc_addr) as channel:
            stub = gpb_grpc.GenerationStub(channel)
            code, _ = _grpc_code(stub, gpb.GenerateRequest(prompt="hi", sampling=S(max_tokens=1)))
            assert code == grpc.StatusCode.UNAUTHENTICATED
            stats = stack.stats()
            assert stats.num_finished + stats.num_running + stats.num_waiting == 0
            ok = list(
                stub.Generate(
                    gpb.GenerateRequest(prompt="hi", sampling=S(max_tokens=1)),
                    metadata=(("authorization", "Bearer k-two"),),
                )
            )
            assert ok[-1].finish_reason == gpb.FINISH_REASON_LENGTH
        good = httpx.post(url, json=OK, headers={"Authorization": "Bearer k-one"})
        assert good.status_code == 200
        assert stack.stats().num_finished == 2
    finally:
        stack.stop()


def test_ab_routing_split_stickiness_pinning_and_report(tmp_path, default_model_dir):
    stack = NullStack(tmp_path, variants={"a": 1.0, "b": 1.0})
    try:
        url = f"{stack.base_url}/v1/completions"
        started = time.time()
        with httpx.Client(timeout=30) as client:
            served = [client.post(url, json=OK).headers["x-sarathi-variant"] for _ in range(40)]
            assert 8 <= served.count("a") <= 32 and served.count("a") + served.count("b") == 40
            finished = {v: stack.stats(v).num_finished for v in ("a", "b")}
            assert finished == {"a": served.count("a"), "b": served.count("b")}
            sticky = {
                client.post(url, json={**OK, "user": "alice"}).headers["x-sarathi-variant"]
                for _ in range(6)
            }
            assert len(sticky) == 1
            pinned = client.post(url, json=OK, headers={"x-sarathi-variant": "b"})
            assert pinned.headers["x-sarathi-variant"] == "b"
            unknown = client.post(url, json=OK, headers={"x-sarathi-variant": "c"})
            assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "variant"
            ended = time.time()
            metrics = client.get(f"{stack.base_url}/metrics").text
            samples = client.get(f"{stack.base_url}/ab/samples").json()["variants"]
        assert 'variant="a"' in metrics and 'variant="b"' in metrics
        report = subprocess.run(
            [sys.executable, "-m", "sarathi_serve.cli.main", "ab", "report", "--gateway",
             stack.base_url, "--json"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        parsed = json.loads(report.stdout)
        variants = parsed["variants"]
        (sticky_variant,) = sticky
        requests = {v: served.count(v) + 6 * (sticky_variant == v) for v in ("a", "b")}
        requests["b"] += 1  # the pinned one; the unknown variant's was refused
        assert {v: row["requests"] for v, row in variants.items()} == requests
        assert sum(requests.values()) == 47
        for name, row in variants.items():
            assert row["output_tokens"] == OK["max_tokens"] * requests[name]  # null: no EOS
            # tokens over the time between the first and the last finish: positive, at
            # least tokens over the whole test's time, and the samples' own quotient
            finished_at = samples[name]["finished_at"]
            assert len(finished_at) == requests[name]
            assert started <= min(finished_at) <= max(finished_at) <= ended
            throughput = row["output_throughput_tok_s"]
            assert throughput > 0
            assert throughput >= row["output_tokens"] / (ended - started)
            span = max(finished_at) - min(finished_at)
            assert throughput == pytest.approx(sum(samples[name]["output_tokens"]) / span)
            for stat in ("ttft_median_ms", "tpot_median_ms", "e2e_median_ms"):
                low, high = row[stat]["ci95"]
                assert low <= row[stat]["value"] <= high, (name, stat, row[stat])
            column = {"ttft_median_ms": "ttft", "e2e_median_ms": "e2e"}
            for stat, key in column.items():  # the report's medians are the samples'
                want = 1000 * statistics.median(samples[name][key])
                assert row[stat]["value"] == pytest.approx(want), (name, stat)
            assert row["ttft_median_ms"]["value"] <= row["e2e_median_ms"]["value"]
        # Ratios are to the first variant (the baseline, which has no ratio of its own:
        # it would be 1): each is the quotient of the report's own values.
        assert parsed["baseline"] == "a" and set(parsed["ratios"]) == {"b"}
        for stat, ratio in parsed["ratios"]["b"].items():
            base, other = variants["a"][stat]["value"], variants["b"][stat]["value"]
            if base == 0:
                assert ratio["value"] is None, (stat, ratio)
                continue
            assert ratio["value"] == pytest.approx(other / base), (stat, ratio, base, other)
            low, high = ratio["ci95"]
            assert 0 < low <= high, (stat, ratio)

        # the user key by header (HTTP) and metadata (gRPC), the pin by metadata: each
        # request answers with the variant that served it, which also counts it
        with httpx.Client(timeout=30) as client:
            by_header = {
                client.post(url, json=OK, headers={"x-sarathi-user": "carol"}).headers[
                    "x-sarathi-variant"
                ]
                for _ in range(6)
            }
        assert len(by_header) == 1
        with grpc.insecure_channel(stack.grpc_addr) as channel:
            stub = gpb_grpc.GenerationStub(channel)
            request = gpb.GenerateRequest(prompt="Hi", sampling=gpb.SamplingOptions(max_tokens=2))
            for pin in ("a", "b"):
                before = stack.stats(pin).num_finished
                call = stub.Generate(request, timeout=30, metadata=[("x-sarathi-variant", pin)])
                assert len(list(call)) >= 1
                assert dict(call.initial_metadata())["x-sarathi-variant"] == pin
                assert stack.stats(pin).num_finished == before + 1
            users = set()
            for _ in range(4):
                call = stub.Generate(request, timeout=30, metadata=[("x-sarathi-user", "carol")])
                list(call)
                users.add(dict(call.initial_metadata())["x-sarathi-variant"])
            assert users == by_header, "a user sticks to one variant on both edges"
    finally:
        stack.stop()


def _self_signed(tmp_path):
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_on_both_ports(tmp_path, default_model_dir):
    cert, key = _self_signed(tmp_path)
    stack = NullStack(tmp_path, tls=(cert, key))
    try:
        response = httpx.post(
            f"{stack.base_url}/v1/completions",
            json=OK,
            verify=ssl.create_default_context(cafile=cert),
        )
        assert response.status_code == 200
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served
            httpx.post(stack.base_url.replace("https", "http") + "/v1/completions", json=OK)
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(stack.grpc_addr, credentials) as channel:
            stub = gpb_grpc.GenerationStub(channel)
            answers = list(
                stub.Generate(gpb.GenerateRequest(prompt="hi", sampling=S(max_tokens=2)))
            )
            assert answers[-1].usage.completion_tokens == 2
    finally:
        stack.stop()
