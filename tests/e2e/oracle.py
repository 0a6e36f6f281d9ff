"""Prompts, the Hugging Face reference outputs, and concurrent clients for the e2e tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
import torch

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


def hf_reference(model_dir, tokenizer) -> list[list[int]]:
    """Greedy `generate` of the same model, one prompt at a time (no padding)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    outputs = []
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=MAX_TOKENS, do_sample=False)
        outputs.append(out[0, len(ids) :].tolist())
    return outputs


def generate_tokens(addr: str, prompt: str, max_tokens: int = MAX_TOKENS) -> list[int]:
    request = gpb.GenerateRequest(
        prompt=prompt, sampling=gpb.SamplingOptions(max_tokens=max_tokens, temperature=0.0)
    )
    with grpc.insecure_channel(addr) as channel:
        return [
            t
            for r in gpb_grpc.GenerationStub(channel).Generate(request, timeout=300)
            for t in r.token_ids
        ]


def generate_concurrently(
    addr: str,
    stagger_s: float = 0.15,
    on_start: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """Sends every prompt from its own thread, `stagger_s` apart; `on_start(i)`
    runs in the main thread before prompt i is released."""
    results: list[list[int] | Exception] = [[] for _ in PROMPTS]
    gates = [threading.Event() for _ in PROMPTS]

    def one(i: int) -> None:
        gates[i].wait()
        try:
            results[i] = generate_tokens(addr, PROMPTS[i])
        except Exception as exc:  # reported below with the prompt
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for i, gate in enumerate(gates):
        if on_start is not None:
            on_start(i)
        gate.set()
        time.sleep(stagger_s)
    for t in threads:
        t.join()
    for i, r in enumerate(results):
        if isinstance(r, Exception):
            raise AssertionError(f"prompt {i} failed: {r}")
    return results  # type: ignore[return-value]
