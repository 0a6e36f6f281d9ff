# ruff: noqa: E501  (tables of cases: one case per line)
"""Structured output and logit_bias as both edges read them, and as the validator checks them."""

import json

import pytest

from sarathi_serve.common.errors import InvalidArgument
from sarathi_serve.common.grammar import ANY_OBJECT
from sarathi_serve.common.sampling import Grammar
from sarathi_serve.gateway.openai_protocol import ChatCompletionRequest, CompletionRequest
from sarathi_serve.gateway.server import generate_input_from_pb
from sarathi_serve.gateway.validation import RequestValidator
from sarathi_serve.protocol import generate_pb2 as gpb

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
MESSAGES = [{"role": "user", "content": "hi"}]


def constraint_of(**body):
    return CompletionRequest(prompt="x", **body).to_inputs()[0].sampling.constraint


@pytest.mark.parametrize(
    ("body", "field", "grammar"),
    [
        ({"response_format": {"type": "json_object"}}, "response_format", ANY_OBJECT),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA, "strict": True}}},
            "response_format",
            Grammar("json_schema", json.dumps(SCHEMA)),
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}},
            "response_format",
            Grammar("json_schema", json.dumps(SCHEMA), loose=True),  # OpenAI's strict: false
        ),
        ({"structured_outputs": {"json": SCHEMA}}, "structured_outputs.json", Grammar("json_schema", json.dumps(SCHEMA))),
        ({"structured_outputs": {"regex": "a+"}}, "structured_outputs.regex", Grammar("regex", "a+")),
        ({"structured_outputs": {"choice": ["x", "y"]}}, "structured_outputs.choice", Grammar("choice", '["x", "y"]')),
        ({"structured_outputs": {"grammar": 'root ::= "a"'}}, "structured_outputs.grammar", Grammar("ebnf", 'root ::= "a"')),
        ({"structured_outputs": {"json_object": True}}, "structured_outputs.json_object", ANY_OBJECT),
        ({"guided_json": json.dumps(SCHEMA)}, "guided_json", Grammar("json_schema", json.dumps(SCHEMA))),
        ({"guided_regex": "b"}, "guided_regex", Grammar("regex", "b")),
        ({"guided_choice": ["z"]}, "guided_choice", Grammar("choice", '["z"]')),
        ({"guided_grammar": 'root ::= "a"'}, "guided_grammar", Grammar("ebnf", 'root ::= "a"')),
    ],
)  # fmt: skip
def test_every_way_to_ask_reads_into_one_constraint(body, field, grammar):
    constraint = constraint_of(**body)
    assert (constraint.field, constraint.grammar) == (field, grammar)
    chat = ChatCompletionRequest(messages=MESSAGES, **body).to_input().sampling.constraint
    assert chat == constraint


def test_text_and_nothing_are_unconstrained():
    assert constraint_of() is None
    assert constraint_of(response_format={"type": "text"}) is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"response_format": "json"}, r"^response_format: must be an object"),
        ({"response_format": {"type": "xml"}}, r"^response_format.type: must be text"),
        ({"response_format": {"type": "json_schema"}}, r"^response_format.json_schema.schema: a JSON Schema"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}, "strict": "yes"}}}, r"strict: must be a boolean"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, r"^structured_outputs: set exactly one"),
        ({"structured_outputs": {}}, r"^structured_outputs: set exactly one"),
        ({"structured_outputs": {"choice": "a"}}, r"^structured_outputs.choice: a list of strings"),
        ({"structured_outputs": {"regex": 3}}, r"^structured_outputs.regex: must be a string"),
        ({"guided_regex": "a", "response_format": {"type": "json_object"}}, r"^structured output: set at most one of response_format, guided_regex"),
        ({"guided_regex": "\ud800"}, r"^guided_regex: not valid Unicode text"),
        ({"logit_bias": {"abc": 1}}, r"^logit_bias: keys must be token ids"),
        ({"logit_bias": {"-1": 1}}, r"^logit_bias: keys must be token ids"),
        ({"logit_bias": {"5": "high"}}, r"^logit_bias\[5\]: must be a number"),
        ({"logit_bias": [1, 2]}, r"^logit_bias: must be an object"),
    ],
)  # fmt: skip
def test_a_malformed_request_names_its_field(body, message):
    with pytest.raises(InvalidArgument, match=message):
        CompletionRequest(prompt="x", **body).to_inputs()


@pytest.fixture(scope="module")
def validator(tokenizer):
    return RequestValidator(tokenizer, "SmolLM2-135M-Instruct", max_model_len=64)


def prepare(validator, **body):
    return validator.prepare(CompletionRequest(prompt="x", **body).to_inputs()[0])


def test_the_validator_compiles_the_grammar_and_carries_it(validator):
    sampling = prepare(validator, guided_regex="a+", logit_bias={"9": -100, "5": 2.5}).sampling
    assert sampling.grammar == Grammar("regex", "a+")
    assert sampling.logit_bias == ((5, 2.5), (9, -100.0))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"guided_regex": "a(b"}, r"^guided_regex: Regex parsing error"),
        ({"structured_outputs": {"json": {"type": "nonsense"}}}, r'^structured_outputs.json: Unsupported type "nonsense"'),
        ({"structured_outputs": {"choice": []}}, r"^structured_outputs.choice: choice: a non-empty list"),
        ({"guided_grammar": "root ::= x"}, r"^guided_grammar: EBNF parser error"),
        ({"guided_regex": "a" * 70_000}, r"^guided_regex: at most 65536 characters"),
        ({"guided_regex": "a", "ignore_eos": True}, r"^ignore_eos: cannot be combined with guided_regex"),
        ({"guided_regex": "a", "min_tokens": 2}, r"^min_tokens: cannot be combined with guided_regex"),
        ({"logit_bias": {"49152": 1}}, r"^logit_bias: 49152 is outside the vocabulary"),
        ({"logit_bias": {"5": 101}}, r"^logit_bias\[5\]: must be in \[-100, 100\]"),
        ({"logit_bias": {str(i): 1 for i in range(301)}}, r"^logit_bias: at most 300 entries"),
    ],
)  # fmt: skip
def test_the_validator_refuses_what_cannot_run_naming_the_field(validator, body, message):
    with pytest.raises(InvalidArgument, match=message):
        prepare(validator, **body)


def test_grpc_reads_the_same_constraints(validator):
    def constraint(**structured):
        options = gpb.SamplingOptions(structured=gpb.StructuredOutput(**structured))
        request = gpb.GenerateRequest(prompt="x", sampling=options)
        return generate_input_from_pb(request).sampling.constraint

    assert constraint(json_object=True).grammar == ANY_OBJECT
    got = constraint(json_schema=json.dumps(SCHEMA), loose=True)
    assert (got.field, got.grammar) == (
        "sampling.structured.json_schema",
        Grammar("json_schema", json.dumps(SCHEMA), loose=True),
    )
    assert constraint(choice=gpb.Choices(values=["a", "b"])).grammar == Grammar(
        "choice", '["a", "b"]'
    )
    assert constraint(grammar='root ::= "a"').grammar == Grammar("ebnf", 'root ::= "a"')
    with pytest.raises(InvalidArgument, match=r"^sampling.structured: set one of"):
        constraint()
    request = gpb.GenerateRequest(prompt="x", sampling=gpb.SamplingOptions(logit_bias={7: -1.5}))
    assert generate_input_from_pb(request).sampling.logit_bias == ((7, -1.5),)
    bad = gpb.GenerateRequest(
        prompt="x", sampling=gpb.SamplingOptions(structured=gpb.StructuredOutput(regex="("))
    )
    with pytest.raises(InvalidArgument, match=r"^sampling.structured.regex: Regex parsing error"):
        validator.prepare(generate_input_from_pb(bad))
