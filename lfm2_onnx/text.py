"""Tokenizer access and incremental detokenization for streaming."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError


class TextCodec:
    """The folder's tokenizer.json through `tokenizers`, plus what generation needs of it."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:  # tokenizers raises plain Exceptions for unreadable files
            raise UserError(f"{folder}/tokenizer.json cannot be read ({e}); rebuild the folder") from None
        self.special_ids = {i for i, t in self.tokenizer.get_added_tokens_decoder().items() if t.special}

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)


class IncrementalDecoder:
    """Text deltas from a growing token list, never splitting a multi-byte character.

    Decodes a short window of recent tokens (the last few already printed, as context for merges
    and leading spaces) rather than the whole sequence each step; a delta ending in U+FFFD is an
    incomplete UTF-8 sequence and waits for the next token. Concatenated deltas equal decode(all).
    """

    def __init__(self, codec: TextCodec, *, skip_special_tokens: bool = True):
        self.codec, self.skip = codec, skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the context window
        self.read_offset = 0  # tokens whose text has been emitted

    def push(self, token: int) -> str:
        self.ids.append(token)
        prefix = self.codec.decode(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=self.skip)
        full = self.codec.decode(self.ids[self.prefix_offset:], skip_special_tokens=self.skip)
        if full.endswith("\ufffd") or len(full) <= len(prefix):
            return ""
        delta = full[len(prefix):]
        self.prefix_offset, self.read_offset = max(self.read_offset - 4, 0), len(self.ids)
        return delta

    def flush(self) -> str:
        """Whatever is left (an incomplete character at the very end decodes as U+FFFD)."""
        prefix = self.codec.decode(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=self.skip)
        full = self.codec.decode(self.ids[self.prefix_offset:], skip_special_tokens=self.skip)
        self.read_offset = len(self.ids)
        return full[len(prefix):] if len(full) > len(prefix) else ""
