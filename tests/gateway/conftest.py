"""One null stack per test module (a gateway over a scheduler and a null worker), with an
HTTP client and a gRPC stub on it."""

import grpc
import httpx2 as httpx
import pytest

from sarathi_serve.protocol import generate_pb2_grpc as gpb_grpc
from tests.gateway.stack import NullStack


@pytest.fixture(scope="module")
def stack(tmp_path_factory, default_model_dir):
    s = NullStack(tmp_path_factory.mktemp("stack"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def grpc_stub(stack):
    with grpc.insecure_channel(stack.grpc_addr) as channel:
        yield gpb_grpc.GenerationStub(channel)
