"""What the HTTP and gRPC parameters do, not only that they are accepted: null workers,
whose tokens are `null_token(request id, index)`, so every output is known in advance."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sarathi_serve.gateway.metrics import BoundedLabel
from sarathi_serve.protocol import generate_pb2 as gpb
from sarathi_serve.worker.null_runner import null_token

MODEL = "SmolLM2-135M-Instruct"


def completion(http, **body):
    response = http.post("/v1/completions", json={"model": MODEL, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_grpc_tokens_are_the_null_workers_and_stop_token_ids_end_them(grpc_stub):
    def tokens(rid: str, **sampling) -> tuple[list[int], int]:
        request = gpb.GenerateRequest(
            request_id=rid, prompt="Hello", sampling=gpb.SamplingOptions(**sampling)
        )
        responses = list(grpc_stub.Generate(request, timeout=30))
        return [t for r in responses for t in r.token_ids], responses[-1].finish_reason

    got, reason = tokens("effects-plain", max_tokens=6)
    assert got == [null_token("effects-plain", i) for i in range(6)]
    assert reason == gpb.FINISH_REASON_LENGTH
    stop_at = null_token("effects-stop", 3)
    got, reason = tokens("effects-stop", max_tokens=10, stop_token_ids=[stop_at])
    assert reason == gpb.FINISH_REASON_STOP
    assert got[:3] == [null_token("effects-stop", i) for i in range(3)] and len(got) <= 4


def test_max_completion_tokens_and_max_tokens_bound_the_output(http):
    chat = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
              "max_completion_tokens": 5},
    )  # fmt: skip
    assert chat.status_code == 200, chat.text
    assert chat.json()["usage"]["completion_tokens"] == 5
    assert chat.json()["choices"][0]["finish_reason"] == "length"
    assert completion(http, prompt="Hi", max_tokens=3)["usage"]["completion_tokens"] == 3


def test_echo_puts_the_prompt_before_the_text(http):
    plain = completion(http, prompt="Echo me", max_tokens=3)["choices"][0]["text"]
    echoed = completion(http, prompt="Echo me", max_tokens=3, echo=True)["choices"][0]["text"]
    assert echoed.startswith("Echo me") and len(echoed) > len("Echo me")
    assert plain and not plain.startswith("Echo me")


def test_a_list_of_prompts_and_token_id_prompts_give_a_choice_each(http, tokenizer):
    listed = completion(http, prompt=["one", "two", "three"], max_tokens=2)
    assert sorted(c["index"] for c in listed["choices"]) == [0, 1, 2]
    assert listed["usage"]["completion_tokens"] == 6
    ids = tokenizer.encode("four five")
    by_ids = completion(http, prompt=ids, max_tokens=2)
    assert by_ids["usage"]["prompt_tokens"] == len(ids)
    nested = completion(http, prompt=[ids, ids[:1]], max_tokens=2)
    assert nested["usage"]["prompt_tokens"] == len(ids) + 1 and len(nested["choices"]) == 2
    n = completion(http, prompt="Hi", max_tokens=2, n=3)
    assert sorted(c["index"] for c in n["choices"]) == [0, 1, 2]


def test_unknown_fields_are_ignored_and_unsupported_ones_refused_by_name(http):
    assert completion(http, prompt="Hi", max_tokens=2, some_new_field={"x": 1})["choices"]
    refused = http.post(
        "/v1/completions", json={"model": MODEL, "prompt": "Hi", "suffix": "and so on"}
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "suffix"


def test_gateway_metrics_count_prompts_outputs_and_finishes(http, tokenizer):
    def values() -> dict[tuple[str, str], float]:
        out = {}
        for family in text_string_to_metric_families(http.get("/metrics").text):
            for sample in family.samples:
                key = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[(sample.name, key)] = sample.value
        return out

    def total(vals, name: str, **labels: str) -> float:
        return sum(
            v for (n, key), v in vals.items()
            if n == name and all(f"{k}={w}" in key.split(",") for k, w in labels.items())
        )  # fmt: skip

    before = values()
    completion(http, prompt="Count me", max_tokens=4)
    completion(http, prompt="Count me", max_tokens=2, priority=7)  # another class
    after = values()

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    labels = {"model": MODEL, "variant": "default"}
    assert grew("sarathi_prompt_tokens_total", **labels) == 2 * len(tokenizer.encode("Count me"))
    assert grew("sarathi_generation_tokens_total", **labels) == 4 + 2
    assert grew("sarathi_requests_total", finish_reason="length", **labels) == 2
    for priority, outputs in (("0", 4), ("7", 2)):  # the latency series of each class
        of_class = {**labels, "priority": priority, "tenant": ""}
        assert grew("sarathi_requests_total", finish_reason="length", **of_class) == 1
        for name in ("time_to_first_token", "e2e_request_latency"):
            assert grew(f"sarathi_{name}_seconds_count", **of_class) == 1, name
        assert grew("sarathi_inter_token_latency_seconds_count", **of_class) == outputs - 1
    assert total(after, "sarathi_requests_in_flight", **labels) == 0


def test_a_label_keeps_its_first_values_and_calls_the_rest_other():
    label = BoundedLabel(limit=2)
    assert [label(v) for v in ("0", "5", "0", "9", "5", "-3")] == [
        "0",
        "5",
        "0",
        "other",
        "5",
        "other",
    ]
