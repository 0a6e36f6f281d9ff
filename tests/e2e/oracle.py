"""Prompts, the Hugging Face reference outputs, and concurrent clients for the e2e tests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import httpx2 as httpx
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


def generate_tokens(
    addr: str,
    prompt: str,
    max_tokens: int = MAX_TOKENS,
    *,
    request_id: str = "",
    api_key: str = "",
    cache_salt: str = "",
    **sampling: float,
) -> list[int]:
    """Greedy unless `sampling` says otherwise (temperature, top_p, seed, ...); a new
    `cache_salt` keeps the request off prefixes other requests left in the cache."""
    options = {"temperature": 0.0, **sampling}
    request = gpb.GenerateRequest(
        request_id=request_id,
        prompt=prompt,
        sampling=gpb.SamplingOptions(max_tokens=max_tokens, **options),
        cache_salt=cache_salt,
    )
    with grpc.insecure_channel(addr) as channel:
        return [
            t
            for r in gpb_grpc.GenerationStub(channel).Generate(
                request, timeout=300, metadata=_auth(api_key)
            )
            for t in r.token_ids
        ]


def _auth(api_key: str) -> list[tuple[str, str]] | None:
    return [("authorization", f"Bearer {api_key}")] if api_key else None


@dataclass
class SseCompletion:
    text: str = ""
    finish_reason: str | None = None
    done: bool = False  # the stream ended with `data: [DONE]`


def stream_http_completion(
    base_url: str, prompt: str, max_tokens: int = MAX_TOKENS, timeout: float = 300.0
) -> SseCompletion:
    """A greedy completion streamed over the OpenAI HTTP API (SSE), read raw."""
    body = {"model": "SmolLM2-135M-Instruct", "prompt": prompt, "max_tokens": max_tokens}
    out = SseCompletion()
    with httpx.stream(
        "POST",
        f"{base_url}/completions",
        json={**body, "temperature": 0, "stream": True},
        timeout=timeout,
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            assert not out.done, "data after [DONE]"
            if line == "data: [DONE]":
                out.done = True
                continue
            chunk = json.loads(line[len("data: ") :])
            assert "error" not in chunk, chunk
            for choice in chunk["choices"]:
                out.text += choice["text"]
                out.finish_reason = choice["finish_reason"] or out.finish_reason
    return out


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Polls `condition` until it holds; fails the test (naming `what`) when it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"precondition never held within {timeout:.0f}s: {what}")
        time.sleep(0.05)


def generate_concurrently(
    addr: str,
    stagger_s: float = 0.15,
    on_start: Callable[[int], None] | None = None,
    api_key: str = "",
) -> list[list[int]]:
    """Sends every prompt from its own thread, `stagger_s` apart; `on_start(i)`
    runs in the main thread before prompt i is released."""
    results: list[list[int] | Exception] = [[] for _ in PROMPTS]
    gates = [threading.Event() for _ in PROMPTS]

    def one(i: int) -> None:
        gates[i].wait()
        try:
            results[i] = generate_tokens(addr, PROMPTS[i], api_key=api_key)
        except Exception as exc:  # reported below with the prompt
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    try:
        for i, gate in enumerate(gates):
            if on_start is not None:
                on_start(i)
            gate.set()
            time.sleep(stagger_s)
    finally:  # a failed on_start leaves no thread waiting forever (pytest could not exit)
        for gate in gates:
            gate.set()
        for t in threads:
            t.join()
    for i, r in enumerate(results):
        if isinstance(r, Exception):
            raise AssertionError(f"prompt {i} failed: {r}")
    return results  # type: ignore[return-value]


def hf_constrained(model, compiler, ids: list[int], grammar, max_tokens: int) -> list[int]:
    """Greedy `generate` with the grammar's token mask applied at every step: the
    reference for a constrained request (the same compiler as the worker's)."""
    from transformers import LogitsProcessor, LogitsProcessorList

    from sarathi_serve.worker.token_masks import banned_tokens

    matcher = compiler.matcher(grammar)

    class GrammarMask(LogitsProcessor):
        seen = len(ids)

        def __call__(self, input_ids, scores):
            for token in input_ids[0, self.seen :].tolist():
                assert matcher.accept_token(token)
            self.seen = input_ids.shape[1]
            bitmask = compiler.new_bitmask(1)
            matcher.fill_next_token_bitmask(bitmask, 0)
            return scores.masked_fill(banned_tokens(bitmask, scores.shape[1]), float("-inf"))

    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=max_tokens,
            do_sample=False,
            logits_processor=LogitsProcessorList([GrammarMask()]),
        )
    return out[0, len(ids) :].tolist()
