"""The runtime (lfm2_onnx.lfm2_model) on CPU: tokens equal transformers', batches, streaming, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from lfm2_onnx import engine
from lfm2_onnx.errors import UserError
from lfm2_onnx.lfm2_model import Lfm2Model
from lfm2_onnx.sampling import SamplingParams

PROMPTS = [[1, 45, 300, 17, 98, 412, 23, 77, 5, 640, 31], [1, 250, 9], [1, 88, 120, 700, 66, 15, 402]]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    from transformers import Lfm2ForCausalLM

    return Lfm2ForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()


def transformers_greedy(model, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
                             eos_token_id=[7, 2], pad_token_id=0)
    tokens = out[0, len(prompt):].tolist()
    return tokens[:-1] if tokens and tokens[-1] in (7, 2) else tokens  # ours excludes the eos


@pytest.fixture(scope="module")
def model(tiny_export):
    return Lfm2Model.load(tiny_export, max_length=256)


def test_single_prompt_greedy_equals_transformers(model, reference):
    for prompt in PROMPTS:
        assert model.generate_ids([prompt], 32) == [transformers_greedy(reference, prompt, 32)]


def test_ragged_batch_rows_equal_their_single_runs(model, reference):
    expected = [transformers_greedy(reference, p, 32) for p in PROMPTS]
    assert model.generate_ids(PROMPTS, 32) == expected
    assert model.generate_ids(PROMPTS[::-1], 32) == expected[::-1]  # order and padding don't matter


def test_chunked_prefill_equals_one_run(model, monkeypatch):
    long_prompt = [1] + list(range(20, 60))  # 41 tokens
    whole = model.generate_ids([long_prompt], 16)
    for chunk in (8, 10, 41):  # odd and even numbers of chunks end in different conv buffers
        monkeypatch.setattr(engine, "PREFILL_CHUNK", chunk)
        assert model.generate_ids([long_prompt], 16) == whole, chunk


def test_chunked_ragged_rows_equal_their_single_runs(model, monkeypatch):
    """On CPU a ragged batch prefills row by row; rows of odd and even chunk counts end in one buffer."""
    expected = [model.generate_ids([p], 16)[0] for p in PROMPTS]
    for chunk in (2, 3, 4):  # 11, 3 and 7 tokens: 6/2/4, 4/1/3, 3/1/2 chunks
        monkeypatch.setattr(engine, "PREFILL_CHUNK", chunk)
        assert model.generate_ids(PROMPTS, 16) == expected, chunk


def test_rows_stop_on_their_own_eos(tiny_export, tmp_path, model):
    """Make one of row 0's greedy tokens an eos id: row 0 stops there, the other rows don't change."""
    full = model.generate_ids(PROMPTS, 16)
    folder = tmp_path / "export"
    shutil.copytree(tiny_export, folder)
    config = json.loads((folder / "genai_config.json").read_text())
    stop_token = next(t for k, t in enumerate(full[0]) if k >= 2 and t not in full[0][:k]
                      and all(t not in row for row in full[1:]))
    config["model"]["eos_token_id"] = [7, 2, stop_token]
    (folder / "genai_config.json").write_text(json.dumps(config))
    stopped = Lfm2Model.load(folder, max_length=256).generate_ids(PROMPTS, 16)
    assert stopped[0] == full[0][:full[0].index(stop_token)]
    assert stopped[1:] == full[1:]


def test_seeded_sampling_is_reproducible(model):
    a = model.generate("Once upon a time", max_new_tokens=24, temperature=1.0, seed=7)
    b = model.generate("Once upon a time", max_new_tokens=24, temperature=1.0, seed=7)
    c = model.generate("Once upon a time", max_new_tokens=24, temperature=1.0, seed=8)
    assert a == b
    assert a != c


def test_presets_and_generation_defaults(model):
    assert model.sampling_params("lfm2").min_p == pytest.approx(0.15)
    assert model.sampling_params().temperature == 0.0  # the tiny generation_config has no sampling
    with pytest.raises(UserError, match="unknown preset 'spicy'"):
        model.sampling_params("spicy")
    with pytest.raises(UserError, match="temperature"):
        model.generate("hi", temperature=-1.0)


@pytest.mark.parametrize("prompt", ["The capital of France is", "héllo 世界 🙂 ", "def f(x):\n    return"])
def test_stream_concatenates_to_the_final_text(model, prompt):
    for kwargs in ({}, {"temperature": 0.8, "seed": 3}):
        deltas = list(model.generate(prompt, max_new_tokens=40, stream=True, **kwargs))
        assert "".join(deltas) == model.generate(prompt, max_new_tokens=40, **kwargs)
        assert all(deltas)


def test_stream_multibyte_characters_are_never_split(model):
    """Drive the detokenizer with the UTF-8 bytes of CJK/emoji text, one byte-token at a time."""
    from lfm2_onnx.text import IncrementalDecoder

    text = "héllo 世界 🙂 ok"
    ids = model.codec.encode(text, add_special_tokens=False)
    decoder = IncrementalDecoder(model.codec)
    deltas = [decoder.push(t) for t in ids] + [decoder.flush()]
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)


def test_stop_strings(model):
    text = model.generate("The capital of France is", max_new_tokens=40)
    stop = text[10:13]
    cut = model.generate("The capital of France is", max_new_tokens=40, stop=[stop])
    assert cut == text[:text.index(stop)]
    streamed = "".join(model.generate("The capital of France is", max_new_tokens=40, stream=True, stop=[stop]))
    assert streamed == cut


def test_chat_messages_use_the_template(model):
    messages = [{"role": "user", "content": "Hi there"}]
    ids = model.encode(messages)
    rendered = model.codec.decode(ids, skip_special_tokens=False)
    assert rendered.startswith("<|startoftext|><|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n")
    assert isinstance(model.generate(messages, max_new_tokens=8), str)


def test_context_overflow_is_a_clear_error(tiny_export):
    small = Lfm2Model.load(tiny_export, max_length=16)
    with pytest.raises(UserError, match=r"prompt \(11 tokens\) \+ max_new_tokens \(10\) exceeds the context of 16"):
        small.generate_ids([PROMPTS[0]], 10)


@pytest.mark.parametrize("max_length,needle", [
    (-1, "max_length must be an integer >= 1 (KV positions per row: prompt + new tokens), got -1"),
    (0, "max_length must be an integer >= 1"),
    (2.5, "max_length must be an integer >= 1"),
    (100000, "max_length 100000 exceeds the model's context of 4096 tokens; give at most 4096"),
])
def test_max_length_is_checked(tiny_export, max_length, needle):
    with pytest.raises(UserError) as e:
        Lfm2Model.load(tiny_export, max_length=max_length)
    assert needle in str(e.value)
    assert Lfm2Model.load(tiny_export, max_length=4096).capacity == 4096  # the whole context is fine


@pytest.mark.parametrize("messages,needle", [
    ("hello", "messages must be a list of dicts like [{'role': 'user', 'content': 'Hi'}], got str 'hello'"),
    ({"role": "user", "content": "hi"}, "messages must be a list of dicts"),
    (["hello"], "chat messages must be dicts with a role and content, got 'hello'"),
])
def test_chat_messages_must_be_a_list_of_dicts(model, messages, needle):
    with pytest.raises(UserError) as e:
        model.chat(messages, max_new_tokens=2)
    assert needle in str(e.value)


@pytest.mark.parametrize("missing", ["genai_config.json", "tokenizer.json", "onnx/model.onnx",
                                     "onnx/model.onnx_data"])
def test_missing_files_are_a_one_line_error(tiny_export, tmp_path, missing):
    folder = tmp_path / "export"
    shutil.copytree(tiny_export, folder)
    (folder / missing).unlink()
    with pytest.raises(UserError) as e:
        Lfm2Model.load(folder)
    assert "\n" not in str(e.value) and missing.split("/")[-1] in str(e.value)
    assert "build it again" in str(e.value) or "lfm2_onnx.build" in str(e.value)


def test_generate_cli(tiny_export, capsys):
    from lfm2_onnx.generate import main

    assert main([str(tiny_export), "--prompt", "The capital of France is", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == Lfm2Model.load(tiny_export).generate("The capital of France is", max_new_tokens=12).strip()
    assert main([str(tiny_export)]) == 2  # neither --prompt nor --chat


def test_runtime_never_imports_torch(tiny_export):
    import subprocess
    import sys

    code = ("import sys; from lfm2_onnx.lfm2_model import Lfm2Model; "
            f"m = Lfm2Model.load({str(tiny_export)!r}); m.generate('hi', max_new_tokens=4); "
            "import lfm2_onnx.bench, lfm2_onnx.generate, lfm2_onnx.build, lfm2_onnx.verify; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


cuda = pytest.mark.skipif(
    "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers(),
    reason="needs onnxruntime-gpu and a CUDA device")


@cuda
@pytest.mark.cuda
def test_cuda_graph_tokens_equal_cpu(factory, tiny_checkpoint):
    folder = factory.export(tiny_checkpoint, "fp16", "cuda")
    gpu = Lfm2Model.load(folder, ep="cuda", max_length=128)
    plain = Lfm2Model.load(folder, ep="cuda", max_length=128, cuda_graph=False)
    for prompts in ([PROMPTS[0]], PROMPTS):
        assert gpu.generate_ids(prompts, 24) == plain.generate_ids(prompts, 24)
        assert gpu.generate_ids(prompts, 24) == plain.generate_ids(prompts, 24)  # replayed graphs


def test_loads_onnxruntime_genai_builder_folders(tiny_checkpoint, tiny_export, tmp_path):
    """A folder from onnxruntime-genai's own builder (past.%d.conv names, symbolic cache dims) runs too."""
    import subprocess
    import sys

    pytest.importorskip("onnxruntime_genai")
    out = tmp_path / "genai"
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(tiny_checkpoint), "-o",
                    str(out), "-p", "fp32", "-e", "cpu", "-c", str(tmp_path / "cache")],
                   check=True, capture_output=True)
    assert json.loads((out / "genai_config.json").read_text())["model"]["decoder"]["inputs"]["past_conv_names"] \
        == "past.%d.conv"
    theirs = Lfm2Model.load(out, max_length=128).generate_ids([PROMPTS[0]], 16)
    assert theirs == Lfm2Model.load(tiny_export, max_length=128).generate_ids([PROMPTS[0]], 16)


def test_prompt_forms(model):
    """A string, token ids and messages are single prompts; a list of any of them is a batch."""
    ids = model.encode("The capital of France is")
    single = model.generate("The capital of France is", max_new_tokens=8)
    assert model.generate(ids, max_new_tokens=8) == single
    assert model.generate(["The capital of France is", ids], max_new_tokens=8) == [single, single]
    messages = [{"role": "user", "content": "Hi"}]
    assert model.generate([messages, messages], max_new_tokens=4) == [model.generate(messages, max_new_tokens=4)] * 2
    with pytest.raises(UserError, match="a prompt is"):
        model.generate([3.5], max_new_tokens=4)


def _driver_greedy(folder, prompt: list[int], n: int, eos: set[int], ep: str = "cpu") -> list[int]:
    """The reference driver (the folder's own graph, no specialisation) on the same file."""
    from lfm2_onnx.reference_driver import ReferenceDriver

    driver = ReferenceDriver(folder, ep=ep)
    logits, state = driver.prefill([prompt])
    tokens = []
    for _ in range(n):
        token = int(np.argmax(logits[0, -1]))
        if token in eos:
            break
        tokens.append(token)
        logits = driver.decode(np.array([token]), state)
    return tokens


@pytest.mark.parametrize("precision", ["fp16", "int8", "int4"])
def test_runtime_equals_reference_driver_on_other_precisions(factory, tiny_checkpoint, precision):
    """fp16 and quantized CPU files: the runtime's derived graphs pick the tokens the folder's graph picks."""
    folder = factory.export(tiny_checkpoint, precision, "cpu")
    model = Lfm2Model.load(folder, max_length=128)
    eos = set(model.layout.eos_token_ids)
    expected = [_driver_greedy(folder, p, 24, eos) for p in PROMPTS]
    assert model.generate_ids([PROMPTS[0]], 24) == expected[:1]
    assert model.generate_ids(PROMPTS, 24) == expected


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp16", "int8", "int4"])
def test_cuda_runtime_equals_reference_driver(factory, tiny_checkpoint, precision):
    """On the GPU, captured graphs of the derived graph pick the folder graph's tokens, alone and ragged."""
    folder = factory.export(tiny_checkpoint, precision, "cuda")
    model = Lfm2Model.load(folder, ep="cuda", max_length=128)
    eos = set(model.layout.eos_token_ids)
    expected = [_driver_greedy(folder, p, 24, eos, ep="cuda") for p in PROMPTS]
    assert [model.generate_ids([p], 24)[0] for p in PROMPTS] == expected
    assert model.generate_ids(PROMPTS, 24) == expected
