import pytest

from sarathi_serve.common.errors import InvalidArgument, NotFound
from sarathi_serve.gateway.generate_input import (
    ChatMessage,
    ChatPrompt,
    GenerateInput,
    SamplingOptions,
    TextPrompt,
    TokenPrompt,
)
from sarathi_serve.gateway.validation import OFF_LOOP_CHARS, RequestValidator


@pytest.fixture
def validator(tokenizer):
    return RequestValidator(tokenizer, "SmolLM2-135M-Instruct", max_model_len=64)


def request(**sampling):
    return GenerateInput(TextPrompt("Hello there"), sampling=SamplingOptions(**sampling))


def chat(*messages: tuple[str, str]) -> GenerateInput:
    return GenerateInput(ChatPrompt(tuple(ChatMessage(role, text) for role, text in messages)))


def test_defaults(validator):
    prepared = validator.prepare(GenerateInput(TextPrompt("Hello")))
    assert prepared.prompt_token_ids and prepared.sampling.max_tokens == 16
    assert prepared.sampling.temperature == 1.0 and prepared.sampling.top_p == 1.0
    assert prepared.sampling.repetition_penalty == 1.0 and prepared.sampling.seed is None
    assert prepared.sampling.logprobs is None and prepared.stop == ()


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (GenerateInput(TextPrompt("")), "prompt: must not be empty"),
        (GenerateInput(None), "prompt: one of prompt, messages or prompt_token_ids is required"),
        (GenerateInput(TextPrompt("word " * 100)), "prompt: "),
        (request(max_tokens=0), "max_tokens: must be >= 1, got 0"),
        (request(temperature=-0.5), "temperature: must be >= 0, got -0.5"),
        (request(temperature=float("nan")), "temperature: must be >= 0, got nan"),
        (request(top_p=0.0), "top_p: must be in (0, 1], got 0.0"),
        (request(top_p=1.5), "top_p: must be in (0, 1], got 1.5"),
        (request(stop_token_ids=tuple(range(65))), "stop_token_ids: at most 64, got 65"),
        (chat(), "messages: must not be empty"),
        (chat(("robot", "x")), "messages[0].role: 'robot' is not one of"),
        (
            GenerateInput(TokenPrompt((10**6,))),
            "prompt_token_ids: 1000000 is outside the vocabulary",
        ),
        (GenerateInput(TokenPrompt(())), "prompt_token_ids: must not be empty"),
        (request(stop=("x",) * 17), "stop: at most 16 strings, got 17"),
        (request(stop=("",)), "stop[0]: must not be empty"),
        (request(stop=("x" * 513,)), "stop[0]: at most 512 characters, got 513"),
        (request(top_k=49153), "top_k: at most the vocabulary size (49152), got 49153"),
        (request(max_tokens=10**9), "max_tokens: this model's maximum context length is 64"),
    ],
)
def test_bad_input_names_the_field(validator, req, message):
    with pytest.raises(InvalidArgument) as info:
        validator.prepare(req)
    assert str(info.value).startswith(message)


def test_prompt_and_max_tokens_must_fit_the_context(validator):
    prompt = TokenPrompt(tuple(range(10, 50)))  # 40 tokens of a context of 64
    fits = validator.prepare(GenerateInput(prompt, sampling=SamplingOptions(max_tokens=24)))
    assert fits.sampling.max_tokens == 24
    with pytest.raises(InvalidArgument) as info:
        validator.prepare(GenerateInput(prompt, sampling=SamplingOptions(max_tokens=25)))
    assert "you requested 65 tokens (40 in the prompt, 25 in the completion)" in str(info.value)
    # unset: the default, or as many as the context holds (chat), clipped to the context
    near_end = TokenPrompt(tuple(range(10, 60)))  # 50 tokens
    assert validator.prepare(GenerateInput(near_end)).sampling.max_tokens == 14
    assert validator.prepare(GenerateInput(prompt)).sampling.max_tokens == 16
    filled = validator.prepare(GenerateInput(prompt, fill_context=True))
    assert filled.sampling.max_tokens == 24


def test_unknown_model(validator):
    with pytest.raises(NotFound, match="model"):
        validator.prepare(GenerateInput(TextPrompt("hi"), model="gpt-9"))
    assert validator.prepare(GenerateInput(TextPrompt("hi"), model="SmolLM2-135M-Instruct"))


def test_chat_template_is_applied(validator, tokenizer):
    ids = validator.prepare(chat(("user", "Hi!"))).prompt_token_ids
    text = tokenizer.decode(ids)
    assert "<|im_start|>user" in text and text.rstrip().endswith("<|im_start|>assistant")


@pytest.mark.parametrize(
    ("sampling", "field"),
    [
        (dict(min_p=1.5), "min_p"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(presence_penalty=2.5), "presence_penalty"),
        (dict(frequency_penalty=-3.0), "frequency_penalty"),
        (dict(logprobs=21), "logprobs"),
        (dict(max_tokens=4, min_tokens=5), "min_tokens"),
    ],
)
def test_sampling_ranges(validator, sampling, field):
    with pytest.raises(InvalidArgument) as info:
        validator.prepare(request(**sampling))
    assert str(info.value).startswith(field + ":")


def test_full_sampling_options_pass_through(validator):
    prepared = validator.prepare(
        request(
            max_tokens=5,
            temperature=0.0,
            top_p=0.5,
            top_k=7,
            seed=3,
            stop_token_ids=(1, 2),
            ignore_eos=True,
            min_tokens=2,
            min_p=0.1,
            repetition_penalty=1.1,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            logprobs=0,
            stop=("end",),
        )
    )
    sampling = prepared.sampling
    assert (sampling.max_tokens, sampling.top_k, sampling.seed, sampling.min_tokens) == (5, 7, 3, 2)
    assert sampling.temperature == 0.0 and sampling.top_p == 0.5 and sampling.ignore_eos
    assert sampling.stop_token_ids == (1, 2) and prepared.stop == ("end",)
    penalties = (sampling.min_p, sampling.presence_penalty, sampling.frequency_penalty)
    assert penalties == (0.1, 0.5, -0.5)
    assert sampling.repetition_penalty == 1.1 and sampling.logprobs == 0


def test_a_prompt_that_cannot_fit_is_refused_before_it_is_tokenized(validator, monkeypatch):
    calls = []
    monkeypatch.setattr(validator.tokenizer, "encode", lambda *a, **k: calls.append(a) or [1])
    too_long = "x" * (validator.max_prompt_chars + 1)
    for req in (GenerateInput(TextPrompt(too_long)), chat(("user", too_long))):
        with pytest.raises(InvalidArgument, match="characters cannot fit the model's context"):
            validator.prepare(req)
    assert not calls


def test_long_prompts_are_tokenized_off_the_event_loop(tokenizer, monkeypatch):
    import asyncio
    import threading

    validator = RequestValidator(tokenizer, "SmolLM2-135M-Instruct", max_model_len=8192)
    encode, threads = validator.tokenizer.encode, []

    def spy(*args, **kwargs):
        threads.append(threading.current_thread())
        return encode(*args, **kwargs)

    monkeypatch.setattr(validator.tokenizer, "encode", spy)
    short, long = TextPrompt("Hello"), TextPrompt("a" * (OFF_LOOP_CHARS + 1))
    for prompt in (short, long):
        asyncio.run(validator.prepare_async(GenerateInput(prompt)))
    assert threads[0] is threading.main_thread() and threads[1] is not threading.main_thread()
