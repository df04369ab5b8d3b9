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

    tokenizers' DecodeStream does the work (it decodes a short window of recent tokens, in Rust, and
    holds back an incomplete UTF-8 sequence until the next token); flush() gives what it held back.
    Concatenated deltas equal decode(all).
    """

    def __init__(self, codec: TextCodec, *, skip_special_tokens: bool = True):
        from tokenizers.decoders import DecodeStream

        self.codec, self.skip = codec, skip_special_tokens
        self.ids: list[int] = []
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        self._emitted = 0  # characters given out

    def push(self, token: int) -> str:
        self.ids.append(token)
        delta = self._stream.step(self.codec.tokenizer, token) or ""
        self._emitted += len(delta)
        return delta

    def flush(self) -> str:
        """Whatever is left (an incomplete character at the very end decodes as U+FFFD)."""
        text = self.codec.decode(self.ids, skip_special_tokens=self.skip)
        rest, self._emitted = text[self._emitted:], len(text)
        return rest


class TextStream:
    """Generated token ids in, text deltas out, ending at the first stop string (which is not shown).

    Text that might still begin a stop string is held back until the next tokens settle it. The
    search looks only at the new text and the few characters before it, so long outputs stay linear.
    """

    def __init__(self, codec: TextCodec, stop: list[str] | None = None, *, skip_special_tokens: bool = True):
        self.decoder = IncrementalDecoder(codec, skip_special_tokens=skip_special_tokens)
        self.stop = [s for s in (stop or []) if s]
        self._longest = max((len(s) for s in self.stop), default=0)
        self._tail = ""  # the last shown characters a stop string could start in
        self._held = ""
        self.stopped = False

    def push(self, token: int) -> str:
        """The text that can be shown after this token ("" once a stop string was seen)."""
        if self.stopped:
            return ""
        self._held += self.decoder.push(token)
        return self._release(final=False)

    def finish(self) -> str:
        """What was held back, once generation ended."""
        if self.stopped:
            return ""
        self._held += self.decoder.flush()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if not self.stop:
            out, self._held = self._held, ""
            return out
        window = self._tail + self._held
        hits = [at for at in (window.find(s) for s in self.stop) if at != -1]
        if hits:
            self.stopped = True
            out = window[len(self._tail):min(hits)] if min(hits) > len(self._tail) else ""
            self._held = ""
            return out
        keep = 0 if final else max((k for s in self.stop for k in range(1, len(s)) if window.endswith(s[:k])),
                                   default=0)
        out = self._held[:len(self._held) - keep]
        self._held = self._held[len(self._held) - keep:]
        self._tail = (self._tail + out)[-(self._longest - 1):] if self._longest > 1 else ""
        return out
