"""Real clients run an export folder exactly as lfm2_onnx.build wrote it.

* onnxruntime-genai (the CPU Python package): og.Config/og.Model on the folder, greedy search.
* transformers.js (Node, onnxruntime-node CPU): tests/clients/generate.mjs on the folder.

Nothing here edits the folder: what these tests load is what a user downloads.

The reference is transformers' own greedy generate() on the tiny checkpoint in float32. fp32
exports must reproduce its tokens exactly. fp16 exports cannot be held to that in general: fp16
rounding may flip the argmax where two logits are nearly tied (random weights make near-ties
common). So an fp16 client must (a) choose, at every step, a token whose float32 logit is within
FP16_TIE_TOLERANCE of the float32 maximum along the sequence it generated (teacher-forced through
transformers), which a wrong graph or a mishandled cache fails by whole logits, and (b) for
onnxruntime-genai, which runs the same onnxruntime build as our ReferenceDriver, agree with the ReferenceDriver's
greedy tokens on the same file exactly.

Clients end a sequence differently at EOS: transformers, transformers.js and the ReferenceDriver keep the
EOS token, onnxruntime-genai drops it. Every comparison is therefore made through EOS, on the
tokens before the first EOS (`before_eos`), so it holds wherever a random model happens to stop on
a given CPU's kernels; test_clients_stop_at_the_same_eos makes every client stop, on any CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lfm2_onnx.reference_driver import ReferenceDriver  # noqa: E402

CLIENTS_DIR = Path(__file__).resolve().parent / "clients"
GENERATE_MJS = CLIENTS_DIR / "generate.mjs"
TRANSFORMERS_JS = CLIENTS_DIR / "node_modules" / "@huggingface" / "transformers"

NEW_TOKENS = 32
# Prompts of token ids, BOS first as the tokenizer writes them. [1] is the shortest possible prompt
# (a prefill of one token); the 51-token one makes prefill, not decode, fill most of the caches.
PROMPTS = {
    "bos": [1],
    "short": [1, 5, 6, 8, 9],
    "ten": [1, 300, 45, 612, 88, 101, 500, 23, 77, 401],
    "long": [1, *range(10, 60)],
}
# float32 logits of the tiny model have a spread of ~0.8; fp16 exports differ from them by up to
# ~0.013 (measured). A token more than 0.05 below the float32 best cannot come from rounding.
FP16_TIE_TOLERANCE = 0.05


# --- reference -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_model(tiny_checkpoint):
    model = transformers.Lfm2ForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def eos_ids(hf_model) -> set[int]:
    eos = hf_model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


@pytest.fixture(scope="module")
def hf_greedy(hf_model, eos_ids) -> dict[str, list[int]]:
    """transformers' greedy tokens per prompt: the reference every client must reproduce."""
    tokens = {}
    with torch.no_grad():
        for name, prompt in PROMPTS.items():
            out = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                    do_sample=False, max_new_tokens=NEW_TOKENS)
            tokens[name] = before_eos(out[0, len(prompt):].tolist(), eos_ids)
    return tokens


def before_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """The tokens before the first EOS: what every client agrees on, whether it keeps the EOS or not."""
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[:i]
    return tokens


@pytest.fixture(scope="module")
def fp16_export(factory, tiny_checkpoint) -> Path:
    return factory.export(tiny_checkpoint, precision="fp16", ep="cpu")


def driver_greedy(driver: ReferenceDriver, prompt: list[int], new_tokens: int, eos: set[int]) -> list[int]:
    logits, state = driver.prefill([prompt])
    tokens: list[int] = []
    while True:
        token = int(np.argmax(logits[0, -1]))
        tokens.append(token)
        if token in eos or len(tokens) == new_tokens:
            return tokens
        logits = driver.decode(np.array([token]), state)


def assert_near_greedy(hf_model, prompt: list[int], tokens: list[int], eos: set[int], client: str) -> None:
    """Each token is float32's argmax, or within FP16_TIE_TOLERANCE of it, along tokens' own path;
    a client that stopped early must have stopped on an EOS that is such a choice there."""
    tokens = before_eos(tokens, eos)
    with torch.no_grad():
        logits = hf_model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1:].float()
    best = logits.max(dim=-1).values
    if len(tokens) < NEW_TOKENS:  # it stopped: at EOS, which must be a near-greedy choice there
        eos_gap = (best[-1] - logits[-1, sorted(eos)].max()).item()
        assert eos_gap <= FP16_TIE_TOLERANCE, (
            f"{client} stopped after {len(tokens)} tokens, where EOS is {eos_gap:.4f} below the best: {tokens}")
    logits, best = logits[:-1], best[:-1]
    chosen = logits[torch.arange(len(tokens)), torch.tensor(tokens, dtype=torch.long)]
    gaps = (best - chosen).tolist()
    bad = [(step, tokens[step], round(gap, 4)) for step, gap in enumerate(gaps) if gap > FP16_TIE_TOLERANCE]
    assert not bad, (
        f"{client}: fp16 tokens that are not float32's greedy choice up to a near-tie "
        f"(step, token, logit gap): {bad}; tokens {tokens}")


# --- onnxruntime-genai ---------------------------------------------------------------------------


def load_genai(folder: Path):
    """og.Model of the folder as written, or a test failure that quotes genai's refusal."""
    og = pytest.importorskip("onnxruntime_genai")
    try:
        return og.Model(og.Config(str(folder)))
    except Exception as e:  # noqa: BLE001 - the message is the finding
        error = f"{type(e).__name__}: {e}"
    pytest.fail(f"onnxruntime-genai {og.__version__} cannot load {folder} as written: {error}", pytrace=False)


@pytest.fixture(scope="module")
def genai_models():
    """Loaded models by folder, so each export loads once per module (in a test, never in setup)."""
    cache: dict[Path, object] = {}

    def get(folder: Path):
        if folder not in cache:
            cache[folder] = load_genai(folder)
        return cache[folder]

    return get


def genai_greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    # max_length counts the prompt; it also sizes the shared past/present KV buffer, so keep it tight.
    params.set_search_options(do_sample=False, max_length=len(prompt) + new_tokens)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array(prompt, dtype=np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    return [int(t) for t in generator.get_sequence(0)][len(prompt):]


@pytest.fixture(scope="module")
def driver_fp16(fp16_export):
    return ReferenceDriver(fp16_export)


@pytest.mark.parametrize("prompt_name", PROMPTS)
def test_genai_fp32_matches_transformers(genai_models, tiny_export, hf_greedy, eos_ids, prompt_name):
    tokens = genai_greedy(genai_models(tiny_export), PROMPTS[prompt_name], NEW_TOKENS)
    assert before_eos(tokens, eos_ids) == hf_greedy[prompt_name]


@pytest.mark.parametrize("prompt_name", PROMPTS)
def test_genai_fp16_generates(genai_models, fp16_export, driver_fp16, hf_model, eos_ids, prompt_name):
    prompt = PROMPTS[prompt_name]
    tokens = genai_greedy(genai_models(fp16_export), prompt, NEW_TOKENS)
    assert_near_greedy(hf_model, prompt, tokens, eos_ids, "onnxruntime-genai")
    # Same file, same onnxruntime kernels: genai's search must pick exactly the ReferenceDriver's tokens.
    assert before_eos(tokens, eos_ids) == before_eos(driver_greedy(driver_fp16, prompt, NEW_TOKENS, eos_ids), eos_ids)


# --- transformers.js -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, or a skip saying what is missing (asked first, before any export is built)."""
    path = shutil.which("node")
    if path is None:
        pytest.skip("node is not on PATH; transformers.js tests need Node.js 18+")
    if not TRANSFORMERS_JS.is_dir():
        pytest.skip(f"{TRANSFORMERS_JS} is missing; run tests/clients/install.sh to install transformers.js")
    return path


def run_transformers_js(node: str, folder: Path, prompts: list[list[int]], dtype: str | None = None) -> list[list[int]]:
    command = [node, str(GENERATE_MJS), "--model", str(folder), "--ids", json.dumps(prompts),
               "--max-new-tokens", str(NEW_TOKENS)]
    if dtype:
        command += ["--dtype", dtype]
    result = subprocess.run(command, cwd=CLIENTS_DIR, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NODE_NO_WARNINGS": "1"})
    if result.returncode != 0:
        pytest.fail(f"transformers.js failed on {folder} (exit {result.returncode}):\n{result.stderr[-4000:]}",
                    pytrace=False)
    lines = result.stdout.strip().splitlines()
    assert lines, f"generate.mjs printed nothing; stderr:\n{result.stderr[-4000:]}"
    report = json.loads(lines[-1])
    assert report["versions"]["transformers_js"] == "4.3.1", report["versions"]
    return report["generated"]


def test_transformers_js_fp32_matches_transformers(node, tiny_export, hf_greedy, eos_ids):
    generated = run_transformers_js(node, tiny_export, list(PROMPTS.values()), dtype="fp32")
    assert {name: before_eos(tokens, eos_ids) for name, tokens in zip(PROMPTS, generated)} == hf_greedy


def test_transformers_js_fp16_generates(node, fp16_export, hf_model, eos_ids):
    # No dtype: config.json's transformers.js_config must lead transformers.js to onnx/model_fp16.onnx
    # (the only graph in the folder) by itself.
    generated = run_transformers_js(node, fp16_export, list(PROMPTS.values()))
    assert len(generated) == len(PROMPTS)
    for prompt, tokens in zip(PROMPTS.values(), generated):
        assert_near_greedy(hf_model, prompt, tokens, eos_ids, "transformers.js")


# --- stopping at EOS -----------------------------------------------------------------------------


def with_eos(folder: Path, eos_id: int, dest: Path) -> Path:
    """A copy of folder whose only EOS is eos_id, in every file a client reads it from."""
    shutil.copytree(folder, dest)
    for name, section in (("genai_config.json", "model"), ("generation_config.json", None), ("config.json", None)):
        data = json.loads((dest / name).read_text())
        (data[section] if section else data)["eos_token_id"] = eos_id
        (dest / name).write_text(json.dumps(data, indent=2))
    return dest


@pytest.fixture(scope="module")
def eos_case(tiny_export, hf_greedy, tmp_path_factory):
    """A random model rarely emits EOS, so make one of its greedy tokens the EOS (its first occurrence
    after a few steps): every client must stop right there, whichever CPU kernels run it.
    -> (folder, prompt, tokens before the EOS, eos id)."""
    prompt, full = PROMPTS["ten"], hf_greedy["ten"]
    stop = next(i for i in range(3, len(full)) if full[i] not in full[:i])
    folder = with_eos(tiny_export, full[stop], tmp_path_factory.mktemp("eos") / "folder")
    return folder, prompt, full[:stop], full[stop]


def test_reference_driver_and_genai_stop_at_the_same_eos(eos_case):
    folder, prompt, expected, eos_id = eos_case
    ours = driver_greedy(ReferenceDriver(folder), prompt, NEW_TOKENS, {eos_id})
    assert ours == expected + [eos_id]  # the ReferenceDriver keeps the EOS, as transformers does
    genai = genai_greedy(load_genai(folder), prompt, NEW_TOKENS)
    assert genai == expected  # onnxruntime-genai drops it
    assert before_eos(ours, {eos_id}) == before_eos(genai, {eos_id}) == expected


def test_transformers_js_stops_at_the_same_eos(node, eos_case):
    folder, prompt, expected, eos_id = eos_case
    [tokens] = run_transformers_js(node, folder, [prompt], dtype="fp32")
    assert tokens == expected + [eos_id]  # transformers.js keeps the EOS


# --- the README's onnxruntime-genai example ------------------------------------------------------


def readme_python_block(heading: str) -> str:
    readme = (CLIENTS_DIR.parents[1] / "README.md").read_text()
    section = readme.split(f"\n{heading}\n", 1)[1]
    return section.split("```python\n", 1)[1].split("\n```", 1)[0]


def test_readme_genai_example_runs_the_prompt_transformers_runs(tiny_export, tiny_checkpoint, hf_model, eos_ids,
                                                                  capsys):
    pytest.importorskip("onnxruntime_genai")
    from lfm2_onnx.lfm2_model import Lfm2Model

    code = readme_python_block("## Run an export in onnxruntime-genai")
    assert 'og.Model("demo")' in code
    namespace: dict = {}
    exec(compile(code.replace('og.Model("demo")', f"og.Model({str(tiny_export)!r})"), "README.md", "exec"), namespace)
    printed = capsys.readouterr().out

    text, messages = "The capital of France is", [{"role": "user", "content": "What is the capital of France?"}]
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)
    ours = Lfm2Model.load(tiny_export, max_length=128)
    prompt = [int(t) for t in namespace["prompt"]]
    assert prompt == tokenizer(text).input_ids == ours.encode(text)
    chat_prompt = [int(t) for t in namespace["chat_prompt"]]
    hf_chat = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert chat_prompt == hf_chat["input_ids"] == ours.chat_prompt(messages)[0]

    sequence = [int(t) for t in namespace["generator"].get_sequence(0)]
    with torch.no_grad():
        hf = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                               do_sample=False, max_new_tokens=64 - len(prompt))
    assert sequence[:len(prompt)] == prompt
    assert before_eos(sequence[len(prompt):], eos_ids) == before_eos(hf[0, len(prompt):].tolist(), eos_ids)
    assert printed.strip() == namespace["tokenizer"].decode(namespace["generator"].get_sequence(0)).strip()
