import json

import pytest

from sarathi_serve.common.grammar import ANY_OBJECT, GrammarCompiler, choice_ebnf
from sarathi_serve.common.sampling import Grammar

EOS = 2


@pytest.fixture(scope="module")
def compiler(tokenizer):
    return GrammarCompiler(tokenizer, len(tokenizer), EOS)


def accepts(compiler, tokenizer, grammar, text):
    """Whether the grammar takes exactly `text` (as the tokenizer splits it), then EOS."""
    matcher = compiler.matcher(grammar)
    ids = tokenizer.encode(text, add_special_tokens=False)
    return all(matcher.accept_token(t) for t in ids) and matcher.accept_token(EOS)


@pytest.mark.parametrize(
    ("grammar", "message"),
    [
        (Grammar("json_schema", "{not json"), "Expecting property name"),
        (Grammar("json_schema", '{"type": "nonsense"}'), 'Unsupported type "nonsense"'),
        (Grammar("regex", "a(b"), "parenthesis is not closed"),
        (Grammar("ebnf", "root ::= foo"), 'Rule "foo" is not defined'),
        (Grammar("choice", "[]"), "non-empty list"),
        (Grammar("choice", '["a", 3]'), "non-empty string"),
        (Grammar("choice", json.dumps(["\ud800"])), "surrogates not allowed"),
        (Grammar("json_schema", json.dumps({"$ref": "#"})), "Circular"),
    ],
)
def test_a_bad_grammar_is_refused_with_what_is_wrong(compiler, grammar, message):
    with pytest.raises(ValueError, match=message) as info:
        compiler.compile(grammar)
    assert "/project/" not in str(info.value)  # no C++ source locations
    assert len(str(info.value)) <= 300


def test_choices_match_exactly_whatever_their_characters(compiler, tokenizer):
    choices = ['he said "hi"', "back\\slash", "new\nline", "ünïcode ✓"]
    grammar = Grammar("choice", json.dumps(choices))
    for choice in choices:
        assert accepts(compiler, tokenizer, grammar, choice), choice
    assert not accepts(compiler, tokenizer, grammar, "he said")
    assert choice_ebnf(["a", 'b"']) == 'root ::= "a" | "b\\""'


def test_json_schema_strict_and_loose(compiler, tokenizer):
    schema = json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}})
    strict, loose = Grammar("json_schema", schema), Grammar("json_schema", schema, loose=True)
    assert accepts(compiler, tokenizer, strict, '{"a": 1}')
    assert not accepts(compiler, tokenizer, strict, '{"a": 1, "b": 2}')
    assert accepts(compiler, tokenizer, loose, '{"a": 1, "b": 2}')
    assert accepts(compiler, tokenizer, ANY_OBJECT, '{"x": [1, "y", null]}')
    assert not accepts(compiler, tokenizer, ANY_OBJECT, "[1]")


def test_an_unbounded_integer_is_held_to_64_bits_and_a_bounded_one_keeps_its_bounds(
    compiler, tokenizer
):
    def schema(**integer):
        return Grammar(
            "json_schema",
            json.dumps({"type": "array", "items": {"type": "integer", **integer}}),
        )

    assert accepts(compiler, tokenizer, schema(), f"[{2**63 - 1}]")
    assert not accepts(compiler, tokenizer, schema(), f"[{2**63}]")
    assert not accepts(compiler, tokenizer, schema(maximum=10), "[11]")
    assert accepts(compiler, tokenizer, schema(minimum=0), f"[{2**63 - 1}]")


def test_a_matcher_starts_after_the_output_so_far(compiler, tokenizer):
    grammar = Grammar("regex", "[a-z]+ [0-9]+")
    output = tokenizer.encode("abc 12", add_special_tokens=False)
    matcher = compiler.matcher(grammar, output)
    assert matcher.accept_token(tokenizer.encode("3", add_special_tokens=False)[0])
    assert matcher.accept_token(EOS)
    with pytest.raises(ValueError, match="does not match the grammar"):
        compiler.matcher(grammar, tokenizer.encode("123", add_special_tokens=False))
