import pytest

from sarathi_serve.common.errors import InvalidArgument, NotFound
from sarathi_serve.gateway.validation import RequestValidator
from sarathi_serve.protocol import generate_pb2 as gpb


@pytest.fixture
def validator(tokenizer):
    return RequestValidator(tokenizer, "SmolLM2-135M-Instruct", max_model_len=64)


def request(**sampling):
    return gpb.GenerateRequest(prompt="Hello there", sampling=gpb.SamplingOptions(**sampling))


def test_defaults(validator):
    prepared = validator.prepare(gpb.GenerateRequest(prompt="Hello"))
    assert prepared.prompt_token_ids and prepared.sampling.max_tokens == 16
    assert prepared.sampling.temperature == 1.0 and prepared.sampling.top_p == 1.0


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (gpb.GenerateRequest(prompt=""), "prompt"),
        (gpb.GenerateRequest(), "prompt"),
        (gpb.GenerateRequest(prompt="word " * 100), "prompt"),
        (request(max_tokens=0), "max_tokens"),
        (request(temperature=-0.5), "temperature"),
        (request(temperature=float("nan")), "temperature"),
        (request(top_p=0.0), "top_p"),
        (request(top_p=1.5), "top_p"),
        (request(stop_token_ids=list(range(65))), "stop_token_ids"),
        (gpb.GenerateRequest(messages=gpb.ChatMessages()), "messages"),
        (
            gpb.GenerateRequest(
                messages=gpb.ChatMessages(messages=[gpb.ChatMessage(role="robot", content="x")])
            ),
            "messages[0].role",
        ),
        (gpb.GenerateRequest(prompt_token_ids=gpb.TokenIds(ids=[10**6])), "prompt_token_ids"),
        (gpb.GenerateRequest(prompt_token_ids=gpb.TokenIds()), "prompt_token_ids"),
    ],
)
def test_bad_input_names_the_field(validator, req, field):
    with pytest.raises(InvalidArgument) as info:
        validator.prepare(req)
    assert str(info.value).startswith(field + ":")


def test_unknown_model(validator):
    with pytest.raises(NotFound, match="model"):
        validator.prepare(gpb.GenerateRequest(model="gpt-9", prompt="hi"))


def test_chat_template_is_applied(validator, tokenizer):
    msgs = gpb.ChatMessages(messages=[gpb.ChatMessage(role="user", content="Hi!")])
    ids = validator.prepare(gpb.GenerateRequest(messages=msgs)).prompt_token_ids
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
    sampling = validator.prepare(
        request(
            min_p=0.1,
            repetition_penalty=1.1,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            logprobs=2,
        )
    ).sampling
    assert (sampling.min_p, sampling.presence_penalty, sampling.frequency_penalty) == pytest.approx(
        (0.1, 0.5, -0.5)
    )
    assert sampling.repetition_penalty == pytest.approx(1.1) and sampling.logprobs == 2
