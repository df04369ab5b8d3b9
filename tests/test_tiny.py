"""The bundled lfm2-tiny-random checkpoint: contents, tokenizer, chat template, weights, overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from lfm2_onnx.builder.tiny import (  # noqa: E402
    CHAT_TEMPLATE_ASSET,
    TINY_ID,
    TOKENIZER_ASSET,
    tiny_config,
    write_tiny_checkpoint,
)

REAL_LFM2_DIR = Path(__file__).resolve().parents[2] / "shared" / "models" / "LFM2-1.2B"

EXPECTED_FILES = {
    "config.json",
    "model.safetensors",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
}

ROUND_TRIP_TEXTS = [
    "Hello, world!",
    "a , b . c 'tis can't won't",
    "  leading spaces\n\ttabs\r\nand 1234567 digits",
    "def f(x):\n    return {'k': [1, 2]}\n",
    "héllo 世界 🙂",
    "naïve café über привет こんにちは",
]

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / TINY_ID)


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_dir):
    return transformers.AutoTokenizer.from_pretrained(tiny_dir)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def tensor_shapes(checkpoint: Path) -> dict[str, list[int]]:
    with safe_open(checkpoint / "model.safetensors", "pt") as f:
        return {name: list(f.get_slice(name).get_shape()) for name in f.keys()}


# --- folder and config ---------------------------------------------------------------------------


def test_folder_contents(tiny_dir):
    assert {p.name for p in tiny_dir.iterdir()} == EXPECTED_FILES
    assert read_json(tiny_dir / "config.json") == tiny_config()
    generation = read_json(tiny_dir / "generation_config.json")
    assert generation["bos_token_id"] == 1
    assert generation["eos_token_id"] == [7, 2]
    assert generation["pad_token_id"] == 0
    assert (tiny_dir / "chat_template.jinja").read_text() == CHAT_TEMPLATE_ASSET.read_text()


def test_weights_are_float32_and_tied(tiny_dir):
    with safe_open(tiny_dir / "model.safetensors", "pt") as f:
        names = list(f.keys())
        assert {f.get_slice(n).get_dtype() for n in names} == {"F32"}
    assert "lm_head.weight" not in names
    assert "model.embed_tokens.weight" in names


def test_config_loads_in_transformers(tiny_dir):
    config = transformers.AutoConfig.from_pretrained(tiny_dir)
    assert isinstance(config, transformers.Lfm2Config)
    assert config.layer_types == ["conv", "full_attention", "conv", "conv", "full_attention", "conv"]
    assert config.num_hidden_layers == 6
    assert config.vocab_size == len(Tokenizer.from_file(str(TOKENIZER_ASSET)).get_vocab())
    assert config.rope_parameters["rope_theta"] == 1_000_000.0
    transformers.Lfm2Config(**tiny_config())  # the plain dict works too

    shapes = tensor_shapes(tiny_dir)
    # block_auto_adjust_ff_dim: int(2 * 256 / 3) = 170, rounded up to a multiple of 32.
    assert shapes["model.layers.0.feed_forward.w1.weight"] == [192, 64]
    assert shapes["model.embed_tokens.weight"] == [config.vocab_size, 64]


# --- tokenizer -----------------------------------------------------------------------------------


def test_bundled_tokenizer_is_small():
    tokenizer = Tokenizer.from_file(str(TOKENIZER_ASSET))
    assert 512 <= tokenizer.get_vocab_size() <= 1024
    assert TOKENIZER_ASSET.stat().st_size < 100_000


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_tokenizer_round_trip(tiny_dir, hf_tokenizer, text):
    raw = Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))
    ids = raw.encode(text, add_special_tokens=False).ids
    assert raw.decode(ids) == text

    hf_ids = hf_tokenizer.encode(text)
    assert hf_ids[0] == 1 and hf_ids.count(1) == 1  # one BOS, from the post-processor
    assert hf_tokenizer.decode(hf_ids, skip_special_tokens=True) == text


def test_special_tokens_in_transformers(hf_tokenizer):
    assert (hf_tokenizer.bos_token, hf_tokenizer.bos_token_id) == ("<|startoftext|>", 1)
    assert (hf_tokenizer.eos_token, hf_tokenizer.eos_token_id) == ("<|im_end|>", 7)
    assert (hf_tokenizer.pad_token, hf_tokenizer.pad_token_id) == ("<|pad|>", 0)
    # Special tokens are matched whole, never split by BPE.
    ids = hf_tokenizer.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)
    assert ids[0] == 6 and ids[-1] == 7


def test_special_token_ids_match_real_tokenizer():
    real_path = REAL_LFM2_DIR / "tokenizer.json"
    if not real_path.exists():
        pytest.skip(f"real LFM2 tokenizer not available at {real_path}")
    real = {t["content"]: t for t in read_json(real_path)["added_tokens"]}
    tiny = read_json(TOKENIZER_ASSET)["added_tokens"]
    assert len(tiny) >= 14
    for token in tiny:
        assert token == real[token["content"]], token["content"]
    tiny_names = {t["content"] for t in tiny}
    for name in ["<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>",
                 "<|tool_call_start|>", "<|tool_call_end|>", "<|tool_list_start|>", "<|tool_list_end|>",
                 "<|tool_response_start|>", "<|tool_response_end|>"]:  # fmt: skip
        assert name in tiny_names


# --- chat template -------------------------------------------------------------------------------


CONVERSATIONS = {
    "plain": ([{"role": "user", "content": "Hi there"}], None),
    "system": ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], None),
    "tools_no_system": ([{"role": "user", "content": "Weather in Paris?"}], [WEATHER_TOOL]),
    "tool_round_trip": (
        [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": '<|tool_call_start|>[get_weather(city="Paris")]<|tool_call_end|>'},
            {"role": "tool", "content": '{"temp_c": 21}'},
        ],
        [WEATHER_TOOL, WEATHER_TOOL],
    ),
}


def test_chat_template_renders(hf_tokenizer):
    messages, tools = CONVERSATIONS["tool_round_trip"]
    rendered = hf_tokenizer.apply_chat_template(messages, tools=tools[:1], tokenize=False, add_generation_prompt=True)
    tool_json = json.dumps(WEATHER_TOOL, ensure_ascii=False)
    assert rendered == (
        "<|startoftext|>"
        "<|im_start|>system\nYou are helpful.\n"
        f"List of tools: <|tool_list_start|>[{tool_json}]<|tool_list_end|><|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<|tool_call_start|>[get_weather(city="Paris")]<|tool_call_end|><|im_end|>\n'
        '<|im_start|>tool\n<|tool_response_start|>{"temp_c": 21}<|tool_response_end|><|im_end|>\n'
        "<|im_start|>assistant\n"
    )
    plain = hf_tokenizer.apply_chat_template(CONVERSATIONS["plain"][0], tokenize=False)
    assert plain == "<|startoftext|><|im_start|>user\nHi there<|im_end|>\n"
    encoded = hf_tokenizer.apply_chat_template(
        CONVERSATIONS["plain"][0], tokenize=True, add_generation_prompt=True, return_dict=True
    )
    ids = list(encoded["input_ids"])
    # The template writes <|startoftext|> itself, so tokenizing must not add a second one.
    assert ids[:2] == [1, 6] and ids.count(1) == 1


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_chat_template_matches_real_lfm2(hf_tokenizer, name):
    real_path = REAL_LFM2_DIR / "chat_template.jinja"
    if not real_path.exists():
        pytest.skip(f"real LFM2 chat template not available at {real_path}")
    messages, tools = CONVERSATIONS[name]
    for add_generation_prompt in (False, True):
        kwargs = dict(tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt)
        ours = hf_tokenizer.apply_chat_template(messages, **kwargs)
        real = hf_tokenizer.apply_chat_template(messages, chat_template=real_path.read_text(), **kwargs)
        assert ours == real


# --- weights -------------------------------------------------------------------------------------


def test_greedy_generation_is_varied(tiny_dir, hf_tokenizer):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    prompt = hf_tokenizer("The quick brown fox", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, do_sample=False, max_new_tokens=32, min_new_tokens=32)
    new_tokens = out[0, prompt["input_ids"].shape[1] :].tolist()
    assert len(new_tokens) == 32
    assert len(set(new_tokens)) > 8, new_tokens


def test_same_seed_same_weights(tmp_path, tiny_dir):
    again = write_tiny_checkpoint(tmp_path / "again", seed=0)
    assert (again / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()
    other = write_tiny_checkpoint(tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny_dir / "model.safetensors").read_bytes()


# --- overrides -----------------------------------------------------------------------------------


def load_and_run(checkpoint: Path) -> None:
    """The checkpoint loads in transformers without missing weights and runs a forward pass."""
    model, info = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        logits = model(torch.tensor([[1, 400, 500, 600]])).logits
    assert logits.shape == (1, 4, model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_override_conv_bias(tmp_path):
    checkpoint = write_tiny_checkpoint(tmp_path, conv_bias=True)
    shapes = tensor_shapes(checkpoint)
    assert read_json(checkpoint / "config.json")["conv_bias"] is True
    assert shapes["model.layers.0.conv.conv.bias"] == [64]
    assert shapes["model.layers.0.conv.in_proj.bias"] == [192]
    assert shapes["model.layers.0.conv.out_proj.bias"] == [64]
    load_and_run(checkpoint)


def test_override_untied_embeddings(tmp_path):
    checkpoint = write_tiny_checkpoint(tmp_path, tie_word_embeddings=False)
    with safe_open(checkpoint / "model.safetensors", "pt") as f:
        assert not torch.equal(f.get_tensor("lm_head.weight"), f.get_tensor("model.embed_tokens.weight"))
    load_and_run(checkpoint)


def test_override_one_kv_head(tmp_path):
    checkpoint = write_tiny_checkpoint(tmp_path, num_key_value_heads=1)
    shapes = tensor_shapes(checkpoint)
    assert shapes["model.layers.1.self_attn.k_proj.weight"] == [16, 64]  # head_dim 64 / 4 heads
    assert shapes["model.layers.1.self_attn.v_proj.weight"] == [16, 64]
    load_and_run(checkpoint)


def test_override_attention_first_and_last(tmp_path):
    layer_types = ["full_attention", "conv", "conv", "full_attention"]
    checkpoint = write_tiny_checkpoint(tmp_path, layer_types=layer_types)
    config = read_json(checkpoint / "config.json")
    assert config["layer_types"] == layer_types and config["num_hidden_layers"] == 4
    shapes = tensor_shapes(checkpoint)
    assert "model.layers.0.self_attn.q_proj.weight" in shapes
    assert "model.layers.3.self_attn.q_proj.weight" in shapes
    assert "model.layers.4.operator_norm.weight" not in shapes
    load_and_run(checkpoint)


def test_overrides_do_not_leak_into_defaults():
    tiny_config(layer_types=["conv"], rope_parameters={"rope_type": "default", "rope_theta": 10.0})
    assert tiny_config()["num_hidden_layers"] == 6
    assert tiny_config()["rope_parameters"]["rope_theta"] == 1_000_000.0


def test_inconsistent_depth_is_rejected():
    with pytest.raises(ValueError, match="num_hidden_layers"):
        tiny_config(num_hidden_layers=3)
