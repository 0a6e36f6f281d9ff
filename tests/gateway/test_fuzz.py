"""Hostile input at both public edges, property-based: 2,000+ bodies, headers and raw
messages a client could send. Whatever it is, the answer is never a server error, every
HTTP refusal is OpenAI's error body, and the gateway serves normally afterwards."""

from __future__ import annotations

import json

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sarathi_serve.protocol import generate_pb2 as gpb
from tests.gateway.test_http_api import (
    CHAT,
    COMPLETION,
    GRPC_REQUESTS,
    JSON,
    OK,
    VALID_CHAT,
    VALID_COMPLETION,
    _assert_error_shape,
    _assert_success_shape,
)

HTTP_EXAMPLES = 1200
GRPC_EXAMPLES = 900
_SUPPRESS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
GENERATE = f"/{gpb.DESCRIPTOR.services_by_name['Generation'].full_name}/Generate"

# Header values an HTTP client can send (latin-1 printable, as httpx encodes them).
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300).map(
    str.strip
)  # a value's own spaces are not part of it
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "x-request-id": HEADER_TEXT | st.just("x" * 8000),
        "authorization": HEADER_TEXT | st.sampled_from(["Bearer", "Bearer  x", "Basic a"]),
        "x-sarathi-variant": HEADER_TEXT | st.sampled_from(["default", "nope", ""]),
        "x-sarathi-user": HEADER_TEXT,
        "content-type": st.sampled_from(
            ["application/json", "text/plain", "application/x-www-form-urlencoded", "", "*/*"]
        ),
        "accept": st.sampled_from(["*/*", "text/event-stream", "application/json", "x/y"]),
        "content-encoding": st.sampled_from(["gzip", "identity", "br"]),
    },
)
NESTED = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=30,
)
RAW_BODIES = st.one_of(
    st.binary(max_size=200),  # not JSON, not UTF-8
    st.text(max_size=200).map(str.encode),
    st.builds(lambda d: ("[" * d + "]" * d).encode(), st.integers(1, 5000)),  # deep nesting
    st.builds(lambda n: json.dumps({"prompt": "hi", "max_tokens": n}).encode(),
              st.integers(-(2**70), 2**70)),
    st.builds(lambda b: json.dumps(b).encode(), NESTED),
    st.just(b'{"prompt": "hi", "prompt": 5}'),  # duplicate keys
    st.just(b'{"prompt": "\\ud800", "max_tokens": 2}'),  # a lone surrogate
    st.just(b'{"prompt": "hi", "max_tokens": 2}' + b" " * 100_000),
)  # fmt: skip
BODIES = st.one_of(
    st.builds(lambda b: json.dumps(b).encode(), COMPLETION | CHAT | JSON),
    st.builds(lambda b: json.dumps(b).encode(), VALID_COMPLETION | VALID_CHAT),
    RAW_BODIES,
)
PATHS = st.sampled_from(
    ["/v1/completions", "/v1/chat/completions", "/v1/completions/", "/v1/nothing", "/v1", "/"]
)


@settings(max_examples=HTTP_EXAMPLES, deadline=None, suppress_health_check=_SUPPRESS)
@given(path=PATHS, method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]),
       body=BODIES, headers=HEADERS)  # fmt: skip
def test_hostile_http_requests_never_get_a_server_error(stack, http, path, method, body, headers):
    if body.startswith(b"{") and b'"n"' in body:
        try:  # bounded work even when valid
            parsed = json.loads(body)
            if isinstance(parsed, dict) and isinstance(parsed.get("n"), int):
                parsed["max_tokens"] = 1
                body = json.dumps(parsed).encode()
        except ValueError:
            pass
    response = http.request(method, path, content=body, headers=headers)
    assert response.status_code < 500, (path, method, body[:300], headers, response.text)
    if response.status_code == 200 and path in ("/v1/completions", "/v1/chat/completions"):
        _assert_success_shape(path, response)
    elif response.status_code >= 400:
        _assert_error_shape(response)


METADATA = st.lists(
    st.tuples(
        st.sampled_from(["x-request-id", "authorization", "x-sarathi-variant", "x-sarathi-user"]),
        HEADER_TEXT,
    ),
    max_size=3,
)
RAW_MESSAGES = st.binary(max_size=300)


@settings(max_examples=GRPC_EXAMPLES, deadline=None, suppress_health_check=_SUPPRESS)
@given(request=GRPC_REQUESTS.map(lambda r: r.SerializeToString()) | RAW_MESSAGES,
       metadata=METADATA, request_id=st.text(max_size=200))  # fmt: skip
def test_hostile_grpc_calls_never_get_a_server_error(stack, request, metadata, request_id):
    if request_id:  # the request id field (1) appended: the last value wins
        request += gpb.GenerateRequest(request_id=request_id).SerializeToString()
    with grpc.insecure_channel(stack.grpc_addr) as channel:
        call = channel.unary_stream(
            GENERATE,
            request_serializer=lambda data: data,
            response_deserializer=gpb.GenerateResponse.FromString,
        )
        try:
            list(call(request, timeout=30, metadata=metadata))
        except grpc.RpcError as exc:
            assert exc.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.NOT_FOUND,
            ), (request[:300], metadata, exc.code(), exc.details())
            assert exc.details(), (request[:300], exc.code())


def test_still_serving_normally_after_the_fuzz(stack, http):
    assert stack.alive
    response = http.post("/v1/completions", json=OK)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 2
    stats = stack.stats()
    assert stats.num_workers == 1 and stats.num_running == 0 and stats.num_waiting == 0
    assert stats.num_free_kv_blocks == stats.num_total_kv_blocks
