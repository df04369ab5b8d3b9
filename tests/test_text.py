"""lfm2_onnx.text: incremental detokenising (IncrementalDecoder) on the real LFM2 tokenizer and the tiny one."""

from __future__ import annotations

import random

import pytest

from conftest import shared_model
from lfm2_onnx.text import IncrementalDecoder, TextCodec, TextStream


@pytest.fixture(scope="module", params=["tiny", "LFM2-350M"])
def codec(request, tiny_export):
    return TextCodec(tiny_export if request.param == "tiny" else shared_model(request.param))


def _texts(codec) -> list[list[int]]:
    """Random ids (byte pieces, special tokens, anything) and pieces of multi-byte text."""
    rng = random.Random(7)
    vocab = codec.tokenizer.get_vocab_size()
    text = codec.encode("héllo wörld 日本語 🎉🙂 <|im_end|> def f(x):\n    return x  ", add_special_tokens=False)
    cases = [[rng.randrange(vocab) for _ in range(rng.randrange(1, 80))] for _ in range(60)]
    cases += [text[rng.randrange(len(text)):][:rng.randrange(1, len(text) + 1)] for _ in range(60)]
    return cases


@pytest.mark.parametrize("skip", [True, False])
def test_deltas_concatenate_to_decode_of_all(codec, skip):
    for ids in _texts(codec):
        decoder = IncrementalDecoder(codec, skip_special_tokens=skip)
        deltas = [decoder.push(t) for t in ids]
        assert "".join(deltas) + decoder.flush() == codec.decode(ids, skip_special_tokens=skip), ids


def test_text_stream_stops_at_the_first_stop_string(codec):
    ids = codec.encode("one two three four", add_special_tokens=False)
    stream = TextStream(codec, ["three"])
    out = "".join(stream.push(t) for t in ids) + stream.finish()
    assert out == "one two " and stream.stopped
