import pytest

from sarathi_serve.gateway.detokenizer import IncrementalDetokenizer

TEXTS = [
    "Paris is the capital of France.",
    "Emoji: 🤖🚀 and accents: café, naïve, Ærøskøbing.",
    "中文字符和日本語のテキスト, mixed with English words.",
    "  leading spaces, tabs\tand\nnew lines  ",
]


@pytest.mark.parametrize("text", TEXTS)
def test_token_by_token_deltas_rebuild_the_text(tokenizer, text):
    prompt = tokenizer.encode("Say something:")
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, prompt)
    deltas = [detok.add([t]) for t in ids]
    deltas.append(detok.flush())
    assert "".join(deltas) == tokenizer.decode(ids)
    assert not any("\ufffd" in d for d in deltas)


def test_multibyte_character_split_across_tokens_comes_out_whole(tokenizer):
    ids = tokenizer.encode("🤖", add_special_tokens=False)
    assert len(ids) > 1, "the test needs a character spread over several tokens"
    detok = IncrementalDetokenizer(tokenizer, [])
    deltas = [detok.add([t]) for t in ids]
    assert deltas[:-1] == [""] * (len(ids) - 1)
    assert deltas[-1] == "🤖"


def test_special_tokens_are_skipped(tokenizer):
    detok = IncrementalDetokenizer(tokenizer, [])
    ids = [*tokenizer.encode("Hi", add_special_tokens=False), tokenizer.eos_token_id]
    assert detok.add(ids) + detok.flush() == "Hi"
