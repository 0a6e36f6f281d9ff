"""Structured output through the whole system, as typed clients use it: the official
`openai` client's `chat.completions.parse` with Pydantic models (plain and streamed),
JSON schemas checked with jsonschema, regex and choice constraints, greedy outputs equal
to Hugging Face `generate` under the same grammar, and the same tokens after kill -9 of
the worker and of the leader, and under preemption."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Literal

import grpc
import jsonschema
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field

from sarathi_serve.common.sampling import Grammar
from sarathi_serve.protocol import generate_pb2 as gpb
from sarathi_serve.protocol import generate_pb2_grpc as gpb_grpc
from tests.e2e.oracle import wait_until

MODEL = "SmolLM2-135M-Instruct"
MAX_TOKENS = 200  # every case ends well before; a runaway fails with "length", not a hang


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population: int


class Person(BaseModel):
    first_name: str = Field(max_length=30)
    last_name: str = Field(max_length=30)
    age: int = Field(ge=0, le=150)
    occupation: str = Field(max_length=40)


class Sentiment(BaseModel):
    label: Literal["positive", "negative", "neutral"]
    confidence: float


class Recipe(BaseModel):
    title: str = Field(max_length=50)
    ingredients: list[Annotated[str, Field(max_length=30)]] = Field(max_length=5)
    minutes: int
    vegetarian: bool


class Event(BaseModel):
    name: str = Field(max_length=50)
    year: int = Field(ge=0, le=2100)
    place: str = Field(max_length=40)


PARSE_CASES: list[tuple[type[BaseModel], str]] = [
    (City, "Describe Paris as JSON."),
    (City, "Give the largest city of Japan."),
    (City, "Tell me about the city of Cairo."),
    (City, "Which city is the capital of Brazil?"),
    (Person, "Invent a character for a detective story."),
    (Person, "Describe Marie Curie."),
    (Person, "Who was Albert Einstein?"),
    (Person, "Create a profile of a young chef."),
    (Sentiment, "Classify: 'I love this phone, the battery lasts forever.'"),
    (Sentiment, "Classify: 'The food was cold and the waiter was rude.'"),
    (Sentiment, "Classify: 'The meeting is at 3 pm.'"),
    (Sentiment, "How does this review feel? 'Best concert of my life!'"),
    (Recipe, "Give me a recipe for pancakes."),
    (Recipe, "A quick vegetarian dinner, please."),
    (Recipe, "How do I make a tomato soup?"),
    (Recipe, "Suggest a dessert with chocolate."),
    (Event, "When and where was the first moon landing launched?"),
    (Event, "Tell me about the fall of the Berlin Wall."),
    (Event, "Describe the first modern Olympic Games."),
    (Event, "What happened at the signing of the Magna Carta?"),
]


@pytest.fixture(scope="module")
def system(system_factory):
    return system_factory()


@pytest.fixture(scope="module")
def client(system):
    return OpenAI(base_url=system.base_url, api_key="unused", max_retries=0, timeout=300)


def _messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def test_parse_returns_a_parsed_object_for_every_prompt(client):
    def parse(case: tuple[type[BaseModel], str]):
        model, prompt = case
        completion = client.chat.completions.parse(
            model=MODEL,
            messages=_messages(prompt),
            response_format=model,
            temperature=0,
            max_tokens=MAX_TOKENS,
        )
        return model, completion.choices[0]

    with ThreadPoolExecutor(len(PARSE_CASES)) as pool:
        results = list(pool.map(parse, PARSE_CASES))
    for (model, choice), (_, prompt) in zip(results, PARSE_CASES, strict=True):
        assert choice.finish_reason == "stop", (prompt, choice.message.content)
        assert isinstance(choice.message.parsed, model), (prompt, choice.message.content)
        jsonschema.validate(json.loads(choice.message.content), model.model_json_schema())


def test_streamed_parse_gives_the_same_objects(client):
    def stream(case: tuple[type[BaseModel], str]):
        model, prompt = case
        with client.chat.completions.stream(
            model=MODEL,
            messages=_messages(prompt),
            response_format=model,
            temperature=0,
            max_tokens=MAX_TOKENS,
        ) as events:
            deltas = [e.delta for e in events if e.type == "content.delta"]
            final = events.get_final_completion()
        return model, deltas, final.choices[0]

    cases = PARSE_CASES[::4]
    with ThreadPoolExecutor(len(cases)) as pool:
        results = list(pool.map(stream, cases))
    for model, deltas, choice in results:
        assert len(deltas) > 1, "the content came in one piece, not streamed"
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, model)
        assert "".join(deltas) == choice.message.content


REGEXES = [
    r"\(\d{3}\) \d{3}-\d{4}",
    r"[A-Z][a-z]+ [0-9]{1,2}, [0-9]{4}",
    r"(yes|no), because [a-z ]{5,40}\.",
]
CHOICES = [["red", "green", "blue"], ["Paris", "London", "Berlin", "Madrid"], ["1", "2", "3"]]


@pytest.mark.parametrize("stream", [False, True])
def test_regex_and_choice_outputs_match(client, stream):
    cases = [({"regex": r}, f"Write something matching {r}:") for r in REGEXES]
    cases += [({"choice": c}, f"Pick one of {', '.join(c)}:") for c in CHOICES]

    def complete(case):
        constraint, prompt = case
        extra = {"structured_outputs": constraint}
        if not stream:
            out = client.completions.create(
                model=MODEL, prompt=prompt, max_tokens=60, temperature=0, extra_body=extra
            )
            return out.choices[0].text, out.choices[0].finish_reason
        chunks = list(
            client.completions.create(
                model=MODEL, prompt=prompt, max_tokens=60, temperature=0, extra_body=extra,
                stream=True,
            )
        )  # fmt: skip
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        return text, next(c.choices[0].finish_reason for c in reversed(chunks) if c.choices)

    with ThreadPoolExecutor(len(cases)) as pool:
        outputs = list(pool.map(complete, cases))
    for (constraint, _), (text, finish) in zip(cases, outputs, strict=True):
        assert finish == "stop", (constraint, text)
        if "regex" in constraint:
            assert re.fullmatch(constraint["regex"], text), (constraint, text)
        else:
            assert text in constraint["choice"], (constraint, text)


def test_a_bad_schema_is_refused_before_anything_runs(client):
    import openai

    with pytest.raises(openai.BadRequestError, match="Unsupported type"):
        client.chat.completions.create(
            model=MODEL,
            messages=_messages("x"),
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "bad", "schema": {"type": "nonsense"}},
            },
        )


# ---- exactness: the oracle, and faults ---------------------------------------------

GRAMMARS = [
    Grammar("json_schema", json.dumps(City.model_json_schema())),
    Grammar("regex", REGEXES[1]),
    Grammar("choice", json.dumps(CHOICES[1])),
]
ORACLE_PROMPTS = ["Describe Paris as JSON:", "The date of the first flight:", "The best city:"]


def _structured_pb(grammar: Grammar) -> gpb.StructuredOutput:
    if grammar.kind == "json_schema":
        return gpb.StructuredOutput(json_schema=grammar.spec)
    if grammar.kind == "regex":
        return gpb.StructuredOutput(regex=grammar.spec)
    return gpb.StructuredOutput(choice=gpb.Choices(values=json.loads(grammar.spec)))


def generate_constrained(addr: str, ids: list[int], grammar: Grammar, max_tokens: int) -> list[int]:
    options = gpb.SamplingOptions(
        max_tokens=max_tokens, temperature=0.0, structured=_structured_pb(grammar)
    )
    request = gpb.GenerateRequest(prompt_token_ids=gpb.TokenIds(ids=ids), sampling=options)
    with grpc.insecure_channel(addr) as channel:
        stream = gpb_grpc.GenerationStub(channel).Generate(request, timeout=300)
        return [t for r in stream for t in r.token_ids]


def test_constrained_greedy_outputs_equal_hf_generate_under_the_same_grammar(
    system, tokenizer, constrained_reference
):
    for prompt, grammar in zip(ORACLE_PROMPTS, GRAMMARS, strict=True):
        ids = tokenizer.encode(prompt)
        expected = constrained_reference(ids, grammar, 40)
        assert generate_constrained(system.gateway_addr, ids, grammar, 40) == expected, grammar


def test_constrained_outputs_survive_worker_and_leader_kills_and_preemption(
    system_factory, tokenizer, constrained_reference
):
    """kill -9 of the worker, then of the leader, while constrained greedy requests
    stream, in a KV cache small enough to preempt: every request ends with exactly the
    tokens of HF generate under its grammar (a recomputed request's grammar state is
    rebuilt from its output so far)."""
    blocks_bytes = 8 * 16 * 46080 + 4096  # 8 blocks of 16 tokens: the requests need ~20
    system = system_factory(
        "--token-budget", "32", "--schedulers", "2", "--kv-cache-gb", repr(blocks_bytes / 2**30)
    )
    person = Grammar("json_schema", json.dumps(Person.model_json_schema()))
    grammars = [GRAMMARS[0], person, Grammar("regex", REGEXES[0])] * 2
    prompts = ["Describe Rome:", "Describe a pilot:", "Call me at:"] * 2
    pairs = enumerate(zip(prompts, grammars, strict=True))
    cases = [(tokenizer.encode(f"{i}. {p}"), g) for i, (p, g) in pairs]
    expected = [constrained_reference(ids, g, 32) for ids, g in cases]

    def run_with(kill) -> None:
        outputs: dict[int, list[int] | Exception] = {}

        def one(i: int) -> None:
            try:
                outputs[i] = generate_constrained(system.gateway_addr, *cases[i], 32)
            except Exception as exc:  # reported below, with the request's index
                outputs[i] = exc

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(cases))]
        for t in threads:
            t.start()
        kill()
        for t in threads:
            t.join(timeout=300)
        for i in range(len(cases)):
            assert outputs.get(i) == expected[i], f"request {i} ({cases[i][1].kind})"

    def kill_worker() -> None:
        wait_until(lambda: system.stats().num_running >= 3, "3 requests running")
        os.kill(system.record("worker").pid, signal.SIGKILL)

    run_with(lambda: None)  # preemption alone
    assert system.stats().num_preemptions > 0
    run_with(kill_worker)
    system.refresh()
    leader = next(r for r in system.schedulers if r.address == system.scheduler_addr)

    def kill_leader() -> None:
        wait_until(lambda: system.stats_at(leader.address).num_running >= 3, "3 running")
        os.kill(leader.pid, signal.SIGKILL)

    run_with(kill_leader)


# ---- tool calling --------------------------------------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 40},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "convert_currency",
            "description": "Convert an amount between currencies",
            "parameters": {
                "type": "object",
                "properties": {
                    "amount": {"type": "number"},
                    "source": {"type": "string", "enum": ["USD", "EUR", "JPY"]},
                    "target": {"type": "string", "enum": ["USD", "EUR", "JPY"]},
                },
                "required": ["amount", "source", "target"],
            },
        },
    },
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
TOOL_PROMPTS = [
    "What is the weather in Paris?",
    "Is it cold in Oslo today?",
    "How much is 100 dollars in euros?",
    "Convert 5000 yen to dollars.",
]


def _check_calls(message, names):
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("choice", ["named", "required"])
def test_forced_tool_calls_carry_arguments_valid_for_the_function(client, choice):
    def call(prompt: str):
        name = "convert_currency" if "onvert" in prompt or "much" in prompt else "get_weather"
        tool_choice = {"type": "function", "function": {"name": name}}
        out = client.chat.completions.create(
            model=MODEL,
            messages=_messages(prompt),
            tools=TOOLS,
            tool_choice=tool_choice if choice == "named" else "required",
            temperature=0,
            max_tokens=MAX_TOKENS,
        )
        return name, out.choices[0]

    with ThreadPoolExecutor(len(TOOL_PROMPTS)) as pool:
        results = list(pool.map(call, TOOL_PROMPTS))
    for name, answer in results:
        _check_calls(answer.message, {name} if choice == "named" else set(SCHEMAS))
        assert answer.finish_reason == ("stop" if choice == "named" else "tool_calls")


def test_a_streamed_named_call_assembles_into_valid_arguments(client):
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=_messages(TOOL_PROMPTS[0]),
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            temperature=0,
            max_tokens=MAX_TOKENS,
            stream=True,
        )
    )
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) > 1, "the arguments came in one piece, not streamed"
    assert calls[0].id and calls[0].function.name == "get_weather"
    arguments = "".join(tc.function.arguments or "" for tc in calls)
    jsonschema.validate(json.loads(arguments), SCHEMAS["get_weather"])
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_auto_and_a_tool_result_turn_answer_openai_shaped(client):
    """The model chooses (content, or calls that validate), and a conversation that
    carries an earlier call and its result goes back through the template."""
    out = client.chat.completions.create(
        model=MODEL, messages=_messages(TOOL_PROMPTS[0]), tools=TOOLS, temperature=0,
        max_tokens=60,
    )  # fmt: skip
    message = out.choices[0].message
    if message.tool_calls:
        _check_calls(message, set(SCHEMAS))
    else:
        assert message.content
    history = [
        *_messages(TOOL_PROMPTS[0]),
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"},
    ]  # fmt: skip
    answer = client.chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS, tool_choice="none", temperature=0,
        max_tokens=30,
    )  # fmt: skip
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls


def test_logit_bias_bans_and_forces_tokens_on_both_apis(client, system, tokenizer):
    prompt = "The capital of France is"
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0)
    first = tokenizer.encode(plain.choices[0].text, add_special_tokens=False)[0]
    banned = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=4, temperature=0, logit_bias={str(first): -100}
    )
    assert tokenizer.encode(banned.choices[0].text, add_special_tokens=False)[0] != first
    forced_id = tokenizer.encode(" blue", add_special_tokens=False)[0]
    options = gpb.SamplingOptions(max_tokens=3, temperature=0.0, logit_bias={forced_id: 100.0})
    request = gpb.GenerateRequest(prompt=prompt, sampling=options)
    with grpc.insecure_channel(system.gateway_addr) as channel:
        tokens = [
            t for r in gpb_grpc.GenerationStub(channel).Generate(request) for t in r.token_ids
        ]
    assert tokens == [forced_id] * 3
