"""The OpenAI-compatible API with the official `openai` client, on the real model."""

from __future__ import annotations

import openai
import pytest

MODEL = "SmolLM2-135M-Instruct"
PROMPT = "Write a short list of fruits:"


@pytest.fixture(scope="module")
def system(system_factory):
    return system_factory("--token-budget", "64")


@pytest.fixture(scope="module")
def client(system):
    return openai.OpenAI(base_url=system.base_url, api_key="unused", max_retries=0)


def _greedy(client, **kwargs):
    return client.completions.create(model=MODEL, prompt=PROMPT, temperature=0, **kwargs)


def test_completion_matches_its_stream_and_the_grpc_tokens(client, tokenizer):
    whole = _greedy(client, max_tokens=24, logprobs=0)
    choice = whole.choices[0]
    assert choice.finish_reason == "length"
    assert whole.usage.completion_tokens == 24
    assert whole.usage.prompt_tokens == len(tokenizer.encode(PROMPT))
    chunks = list(
        _greedy(client, max_tokens=24, stream=True, stream_options={"include_usage": True})
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    assert chunks[-2].choices[0].finish_reason == "length"
    tokens = choice.logprobs.tokens
    assert len(tokens) == 24 and "".join(tokens) == choice.text


def test_chat_completion_streams_and_not(client):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    whole = client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=16
    )
    answer = whole.choices[0].message
    assert answer.role == "assistant" and "Paris" in answer.content
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=16, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == answer.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_stop_strings_cut_the_text_exactly_across_token_boundaries(client):
    full = _greedy(client, max_tokens=40, logprobs=0).choices[0]
    tokens = full.logprobs.tokens
    # A stop string that starts inside one token and ends inside a later one.
    offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    i = next(
        k for k in range(3, len(tokens) - 2) if len(tokens[k]) >= 2 and len(tokens[k + 1]) >= 1
    )
    start = offsets[i] + 1
    stop = full.text[start : offsets[i + 1] + 1]
    expected = full.text[: full.text.index(stop)]
    for stream in (False, True):
        result = _greedy(client, max_tokens=40, stop=[stop, "never-appears"], stream=stream)
        if stream:
            chunks = list(result)
            text = "".join(c.choices[0].text for c in chunks)
            finish = chunks[-1].choices[0].finish_reason
        else:
            text, finish = result.choices[0].text, result.choices[0].finish_reason
        assert text == expected, (stop, text)
        assert finish == "stop"
        assert stop not in text


def test_seeded_sampling_repeats_and_n_choices_differ(client):
    def run():
        return client.completions.create(
            model=MODEL, prompt=PROMPT, temperature=1.0, top_p=0.9, seed=7, n=3, max_tokens=12
        )

    first, second = run(), run()
    assert [c.text for c in first.choices] == [c.text for c in second.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert len({c.text for c in first.choices}) > 1
    assert first.usage.completion_tokens == 36


def test_logprobs_in_chat(client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hi"}],
        temperature=0,
        max_tokens=5,
        logprobs=True,
        top_logprobs=3,
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-4)


def test_errors_come_back_as_openai_errors(client):
    with pytest.raises(openai.BadRequestError) as bad:
        _greedy(client, max_tokens=8, top_p=2.0)
    assert "top_p" in str(bad.value)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=2)
    assert [m.id for m in client.models.list()] == [MODEL]
