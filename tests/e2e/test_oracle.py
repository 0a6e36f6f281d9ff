"""Greedy outputs through the whole system equal Hugging Face `generate`, token for token.

Real processes (Redis, scheduler, worker, gateway), the real default model. The
prompts are sent concurrently and staggered so that prefill chunks and decodes
share iterations; several prompts are longer than the smaller token budgets.
"""

import threading
import time

import grpc
import pytest
import torch
from transformers import AutoModelForCausalLM

from sarathi_serve.protocol import generate_pb2 as gpb
from sarathi_serve.protocol import generate_pb2_grpc as gpb_grpc

MAX_TOKENS = 20
PARAGRAPH = (
    "The history of the printing press begins in the fifteenth century, when movable type "
    "changed how books were made, how ideas travelled and how people learned to read. "
)
PROMPTS = [
    "What is the capital of France?",
    "Hi",
    "List three colors:",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    PARAGRAPH * 2 + "In summary,",
    PARAGRAPH * 5 + "The most important consequence was",
    "Translate to French: 'The weather is nice today and we are going to the park.'",
]


@pytest.fixture(scope="module")
def expected(default_model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(default_model_dir).eval()
    outputs = []
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=MAX_TOKENS, do_sample=False)
        outputs.append(out[0, len(ids) :].tolist())
    return outputs


def generate_concurrently(addr: str, stagger_s: float = 0.15) -> list[list[int]]:
    results: list[list[int] | Exception] = [[] for _ in PROMPTS]

    def one(i: int) -> None:
        time.sleep(i * stagger_s)
        request = gpb.GenerateRequest(
            prompt=PROMPTS[i], sampling=gpb.SamplingOptions(max_tokens=MAX_TOKENS, temperature=0.0)
        )
        try:
            with grpc.insecure_channel(addr) as channel:
                tokens: list[int] = []
                for response in gpb_grpc.GenerationStub(channel).Generate(request, timeout=300):
                    tokens.extend(response.token_ids)
                results[i] = tokens
        except Exception as exc:  # reported below with the prompt
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, r in enumerate(results):
        if isinstance(r, Exception):
            raise AssertionError(f"prompt {i} failed: {r}")
    return results  # type: ignore[return-value]


@pytest.mark.parametrize("token_budget", [16, 64, 512])
def test_greedy_outputs_equal_hf_generate(system_factory, tokenizer, expected, token_budget):
    assert max(len(tokenizer.encode(p)) for p in PROMPTS) > 64, (
        "some prompts must exceed the budgets"
    )
    system = system_factory("--token-budget", str(token_budget))
    outputs = generate_concurrently(system.gateway_addr)
    for i, (got, want) in enumerate(zip(outputs, expected, strict=True)):
        assert got == want, f"prompt {i} (budget {token_budget}): {got} != {want}"

    iterations = system.stats().iterations
    assert iterations
    assert all(it.num_prefill_tokens + it.num_decode_tokens <= token_budget for it in iterations)
    assert all(it.token_budget == token_budget and it.policy == "sarathi" for it in iterations)
    mixed = [it for it in iterations if it.num_prefill_tokens and it.num_decode_tokens]
    assert mixed, "no iteration mixed prefill and decode tokens"
    if token_budget <= 64:  # the long prompts were cut into budget-sized chunks
        assert any(
            it.num_prefill_tokens + it.num_decode_tokens == token_budget for it in iterations
        )
