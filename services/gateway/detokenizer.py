"""Incremental detokenization: text deltas that never split a character.

Decoding one token at a time breaks multi-byte characters (an emoji spread
over several byte-level tokens) and word-initial spaces. Like vLLM, we decode a
small window: the text of tokens [prefix, read) is already emitted, and the
text of [prefix, end) minus it is the new delta, held back while it ends in an
incomplete character (U+FFFD).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_NUM_CONTEXT_TOKENS = 5  # prompt tokens decoded with the first outputs, for spacing


class IncrementalDetokenizer:
    def __init__(
        self, tokenizer: Any, prompt_token_ids: Sequence[int], skip_special_tokens: bool = True
    ):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        context = list(prompt_token_ids[-_NUM_CONTEXT_TOKENS:])
        self.token_ids: list[int] = context
        self.num_context_tokens = len(context)
        self.prefix_offset = 0
        self.read_offset = len(context)

    def add(self, new_token_ids: Sequence[int]) -> str:
        """Appends tokens; returns the text that became complete."""
        self.token_ids.extend(new_token_ids)
        return self._delta(final=False)

    def flush(self) -> str:
        """Returns whatever text is still held back (at the end of a request)."""
        return self._delta(final=True)

    def _delta(self, final: bool) -> str:
        prefix_text = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        full_text = self._decode(self.token_ids[self.prefix_offset :])
        if len(full_text) <= len(prefix_text) or (full_text.endswith("\ufffd") and not final):
            return ""
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.token_ids)
        return full_text[len(prefix_text) :]

    def _decode(self, token_ids: list[int]) -> str:
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=self.skip_special_tokens))
