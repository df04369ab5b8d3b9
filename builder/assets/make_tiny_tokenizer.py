"""Generate builder/assets/tiny_tokenizer.json, the tokenizer of the `lfm2-tiny-random` test model.

Run once by hand (the output is committed):

    python builder/assets/make_tiny_tokenizer.py [path/to/real/LFM2/tokenizer.json]

It trains a small byte-level BPE on the text below with the same normalizer / pre-tokenizer /
post-processor / decoder layout as the real LFM2 tokenizer, and puts LFM2's leading special
tokens at the same ids as the real one (<|pad|> 0 ... <|tool_response_end|> 13). If the real
tokenizer.json is available, the special-token block and the pre-tokenizer regex are read from it
and checked; otherwise the copies written here are used. Nothing else is taken from it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ASSETS_DIR = Path(__file__).resolve().parent
OUTPUT_PATH = ASSETS_DIR / "tiny_tokenizer.json"
DEFAULT_REAL_TOKENIZER = ASSETS_DIR.parents[2] / "shared" / "models" / "LFM2-1.2B" / "tokenizer.json"

# 14 special tokens + 256 byte symbols + ~500 merges: small, but long enough words still merge.
TARGET_VOCAB_SIZE = 768

# The first block of LFM2's added tokens, ids 0..13 (ids 14+ are reserved placeholders; skipped).
LFM2_LEADING_SPECIAL_TOKENS = [
    "<|pad|>",
    "<|startoftext|>",
    "<|endoftext|>",
    "<|fim_pre|>",
    "<|fim_mid|>",
    "<|fim_suf|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|tool_list_start|>",
    "<|tool_list_end|>",
    "<|tool_call_start|>",
    "<|tool_call_end|>",
    "<|tool_response_start|>",
    "<|tool_response_end|>",
]
BOS_TOKEN = "<|startoftext|>"

# LFM2's split regex (GPT-4 style, digits in groups of up to three).
LFM2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

TRAINING_TEXT = r'''
The quick brown fox jumps over the lazy dog. A small model is useful when you want to test the
whole export pipeline without waiting for a large download. It has the same kinds of layers as
the real model: short convolution blocks, grouped query attention, and a gated feed forward
network. The weights are random, so the text it writes means nothing, but the shapes, the cache
and the tokenizer all behave like the real thing.

Liquid foundation models mix two kinds of blocks. The convolution blocks keep a short cache of the
last few inputs, and the attention blocks keep a key and value cache that grows with the sequence.
When we export the model, each layer becomes a set of nodes in a graph, and the caches become
inputs and outputs of that graph. We check that the exported graph gives the same logits as the
original model for the same prompt, and that greedy decoding produces the same tokens.

Hello! How are you today? I am fine, thank you. What is the weather like in Paris, London, Tokyo
and New York? It is sunny and warm, with a light wind from the west. Tomorrow there will be rain in
the morning and clouds in the afternoon. Please remember to bring an umbrella.

The user asked the assistant to call a tool. The assistant returned a function call with a name
and a list of arguments, then the tool returned a result, and the assistant answered the question
using that result. A system message can describe the tools that are available, and each message
has a role: system, user, assistant or tool.

Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 42 100 128 256 512 1024 2048 4096 65536 1000000 3.14159
2.71828 -1 +7 1e-5 0.02 2025-07-10 12:30:45 version 1.2.3 and 99.9% of the time, 24/7.

def greet(name: str) -> str:
    """Return a friendly greeting."""
    return f"Hello, {name}!"


class Counter:
    def __init__(self, start: int = 0) -> None:
        self.value = start

    def increment(self, step: int = 1) -> int:
        self.value += step
        return self.value


for i in range(10):
    if i % 2 == 0:
        print(i, "is even")
    else:
        print(i, "is odd")

import json
data = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
print(json.dumps(data, indent=2))

function add(a, b) {
  return a + b;
}
const items = [1, 2, 3].map((x) => x * 2);
console.log(items.length);

Some words in other languages: café, naïve, résumé, über, 世界, こんにちは, привет, 🙂.
'''


def special_token_ids_from_real(real_tokenizer_path: Path) -> dict[str, int]:
    """content -> id of the real tokenizer's added tokens that we keep (checked against our list)."""
    real = json.loads(real_tokenizer_path.read_text(encoding="utf-8"))
    real_ids = {tok["content"]: tok["id"] for tok in real["added_tokens"]}
    for expected_id, content in enumerate(LFM2_LEADING_SPECIAL_TOKENS):
        if real_ids.get(content) != expected_id:
            raise SystemExit(f"{content}: real id {real_ids.get(content)}, expected {expected_id}")
    real_regex = real["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
    if real_regex != LFM2_SPLIT_REGEX:
        raise SystemExit(f"split regex differs from the real tokenizer's:\n{real_regex}")
    return {content: real_ids[content] for content in LFM2_LEADING_SPECIAL_TOKENS}


def build_untrained_tokenizer() -> Tokenizer:
    """Byte-level BPE with LFM2's pipeline: regex split, byte-level mapping, BOS via post-processor."""
    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = None
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LFM2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    # Wrapped in a Sequence like the real file, so code that parses tokenizer.json sees the same shape.
    tokenizer.decoder = decoders.Sequence(
        [decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)]
    )
    bos_id = LFM2_LEADING_SPECIAL_TOKENS.index(BOS_TOKEN)
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
            processors.TemplateProcessing(
                single=f"{BOS_TOKEN} $A",
                pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
                special_tokens=[(BOS_TOKEN, bos_id)],
            ),
        ]
    )
    return tokenizer


def train_tiny_tokenizer() -> Tokenizer:
    tokenizer = build_untrained_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=TARGET_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        # Listed first, so they take ids 0..13 in this order, as in the real tokenizer.
        special_tokens=LFM2_LEADING_SPECIAL_TOKENS,
        # All 256 byte symbols, so any UTF-8 text can be encoded.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([TRAINING_TEXT], trainer=trainer)
    return tokenizer


def check_tokenizer(tokenizer: Tokenizer, expected_ids: dict[str, int]) -> None:
    for content, token_id in expected_ids.items():
        assert tokenizer.token_to_id(content) == token_id, content
    for text in ["Hello, world! 123456", "héllo 世界 🙂", "  spaces\n\tand tabs\r\n", "<|im_start|>user\nhi<|im_end|>"]:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        decoded = tokenizer.decode(ids, skip_special_tokens=False)
        assert decoded == text, (text, decoded)
    assert tokenizer.encode("hi").ids[0] == expected_ids[BOS_TOKEN]


def main() -> None:
    real_path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_REAL_TOKENIZER
    if real_path.exists():
        expected_ids = special_token_ids_from_real(real_path)
        print(f"special token ids checked against {real_path}")
    else:
        expected_ids = {content: i for i, content in enumerate(LFM2_LEADING_SPECIAL_TOKENS)}
        print(f"{real_path} not found; using the built-in special token ids")
    tokenizer = train_tiny_tokenizer()
    check_tokenizer(tokenizer, expected_ids)
    tokenizer.save(str(OUTPUT_PATH), pretty=False)
    size_kb = OUTPUT_PATH.stat().st_size / 1024
    print(f"wrote {OUTPUT_PATH} (vocab {tokenizer.get_vocab_size()}, {size_kb:.1f} KB)")


if __name__ == "__main__":
    main()
