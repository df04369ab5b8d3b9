"""Several variants (EP x precision) in one export folder: layout, --add, and which one runs."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from lfm2_onnx.builder.export import export
from lfm2_onnx.builder.options import BuildOptions
from lfm2_onnx.errors import UserError
from lfm2_onnx.hub import resolve_export
from lfm2_onnx.variants import choose, read_manifest, variant_config_path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def multi(tmp_path_factory, tiny_checkpoint) -> Path:
    """fp32 + int4 for the CPU, then fp16 for CUDA and the CPU added beside them."""
    out = tmp_path_factory.mktemp("variants") / "multi"
    export(tiny_checkpoint, out, [BuildOptions("fp32", "cpu"), BuildOptions("int4", "cpu")], progress=False,
           source={"model": "LiquidAI/LFM2-350M"})
    export(tiny_checkpoint, out, [BuildOptions("fp16", "cuda")], add=True, progress=False)
    export(tiny_checkpoint, out, [BuildOptions("fp16", "cpu")], add=True, progress=False)
    return out


def test_layout(multi):
    manifest = read_manifest(multi)
    assert manifest.names == ["cpu-fp32", "cpu-int4", "cuda-fp16", "cpu-fp16"]
    assert manifest.default == "cpu-fp32"
    assert manifest.source["model"] == "LiquidAI/LFM2-350M"
    files = {v.name: v.onnx_file for v in manifest.variants}
    # transformers.js names; the second fp16 (another EP) gets the EP appended instead of replacing the first.
    assert files == {"cpu-fp32": "onnx/model.onnx", "cpu-int4": "onnx/model_q4.onnx",
                     "cuda-fp16": "onnx/model_fp16.onnx", "cpu-fp16": "onnx/model_fp16_cpu.onnx"}
    for v in manifest.variants:
        assert all((multi / f).is_file() for f in v.files)
        assert v.bytes == sum((multi / f).stat().st_size for f in v.files)
        config = json.loads((multi / v.genai_config).read_text())
        assert config["model"]["decoder"]["filename"] == v.onnx_file
        providers = config["model"]["decoder"]["session_options"]["provider_options"]
        assert bool(providers) == (v.ep == "cuda")
    assert (multi / "genai_config.json").read_text() == (multi / "genai_config.cpu-fp32.json").read_text()
    js = json.loads((multi / "config.json").read_text())["transformers.js_config"]
    assert js["dtype"] == "fp32"  # the first variant's: --add leaves transformers.js's default alone
    assert set(js["use_external_data_format"]) == {"model.onnx", "model_q4.onnx", "model_fp16.onnx",
                                                   "model_fp16_cpu.onnx"}
    assert manifest.get("cpu-fp16").options["js_dtype"] is None  # not at a transformers.js name
    assert manifest.get("cpu-int4").options["block_size"] == 32
    assert not [p for p in multi.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_add_leaves_other_variants_untouched(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    export(tiny_checkpoint, out, BuildOptions("fp32", "cpu"), progress=False)
    before = {p.relative_to(out): _digest(p) for p in out.rglob("*") if p.is_file() and p.name != "variants.json"
              and p.name != "config.json"}
    export(tiny_checkpoint, out, [BuildOptions("int8", "cpu")], add=True, progress=False)
    after = {p.relative_to(out): _digest(p) for p in out.rglob("*") if p.is_file()}
    assert all(after[name] == digest for name, digest in before.items())
    assert read_manifest(out).names == ["cpu-fp32", "cpu-int8"]

    with pytest.raises(UserError, match="already holds cpu-int8"):
        export(tiny_checkpoint, out, [BuildOptions("int8", "cpu")], add=True, progress=False)
    other = Path(tmp_path / "other")
    from lfm2_onnx.builder.tiny import write_tiny_checkpoint

    with pytest.raises(UserError, match="another model"):
        export(write_tiny_checkpoint(other, layer_types=["conv", "full_attention"] * 2), out,
               [BuildOptions("int4", "cpu")], add=True, progress=False)
    assert read_manifest(out).names == ["cpu-fp32", "cpu-int8"]
    with pytest.raises(UserError, match="nothing to add to"):
        export(tiny_checkpoint, tmp_path / "missing", [BuildOptions("int4", "cpu")], add=True, progress=False)


def test_choose(multi):
    manifest = read_manifest(multi)
    assert choose(manifest, "cpu").name == "cpu-fp32"  # the build default for the EP
    assert choose(manifest, "cuda").name == "cuda-fp16"  # a variant built for the EP wins
    assert choose(manifest, "cpu", "int4").name == "cpu-int4"
    assert choose(manifest, "cuda", "int4").name == "cpu-int4"  # a CPU graph runs on CUDA too
    assert choose(manifest, "cpu", "fp16").name == "cpu-fp16"  # the CUDA fp16 graph does not run on the CPU
    with pytest.raises(UserError, match="no int8 variant that runs on ep=cpu; it holds: cpu-fp32, cpu-int4"):
        choose(manifest, "cpu", "int8")
    manifest.get("cpu-fp32").verify = {"passed": False}
    assert choose(manifest, "cpu").name == "cpu-fp16"  # a failed verify is the default only if nothing else is


def test_runtime_selects_the_variant(multi, tiny_export, tmp_path):
    layout = resolve_export(multi, "cpu", "int4")
    assert layout.onnx_path == multi / "onnx" / "model_q4.onnx"
    assert resolve_export(multi, "cpu").onnx_path == multi / "onnx" / "model.onnx"
    older = shutil.copytree(tiny_export, tmp_path / "older")  # built before variants.json
    (older / "variants.json").unlink()
    assert variant_config_path(older, None, "cpu") == older / "genai_config.json"
    with pytest.raises(UserError, match="drop --precision"):
        variant_config_path(older, "int4", "cpu")
    with pytest.raises(UserError, match="--revision applies to a Hub id"):
        resolve_export(multi, "cpu", revision="main")


def test_int4_variant_greedy_equals_a_single_variant_export(multi, factory, tiny_checkpoint):
    from lfm2_onnx import Lfm2Model

    alone = factory.export(tiny_checkpoint, "int4", "cpu")
    prompt = [1, 5, 6, 8, 9]
    ours = Lfm2Model.load(multi, "cpu", precision="int4").generate_ids([prompt], 12)
    assert ours == Lfm2Model.load(alone, "cpu").generate_ids([prompt], 12)


def test_onnxruntime_genai_runs_a_variant_by_overlaying_its_file(multi, tmp_path):
    og = pytest.importorskip("onnxruntime_genai")

    def greedy(config) -> list[int]:
        model = og.Model(config)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=20)
        generator = og.Generator(model, params)
        generator.append_tokens([[1, 5, 6, 8, 9]])
        while not generator.is_done():
            generator.generate_next_token()
        return [int(t) for t in generator.get_sequence(0)]

    config = og.Config(str(multi))
    config.overlay(json.dumps({"model": {"decoder": {"filename": "onnx/model_q4.onnx"}}}))
    overlaid = greedy(config)
    # The same variant as the root config of a copy: what a single-variant folder would run.
    copy = tmp_path / "copy"
    shutil.copytree(multi, copy)
    shutil.copyfile(copy / "genai_config.cpu-int4.json", copy / "genai_config.json")
    assert overlaid == greedy(str(copy))
    assert overlaid != greedy(str(multi))  # and not the fp32 default
    # What onnxruntime-genai 0.18 refuses, which is why variant configs sit beside the root one.
    sub = multi / "sub"
    sub.mkdir(exist_ok=True)
    variant = json.loads((multi / "genai_config.cpu-int4.json").read_text())
    variant["model"]["decoder"]["filename"] = "../onnx/model_q4.onnx"
    (sub / "genai_config.json").write_text(json.dumps(variant))
    try:
        with pytest.raises(Exception, match="path traversal"):
            og.Model(str(sub))
    finally:
        shutil.rmtree(sub)


def test_build_cli_several_precisions_then_add_then_verify_one(tmp_path, capsys):
    from lfm2_onnx import build, verify

    out = tmp_path / "out"
    assert build.main(["-m", "lfm2-tiny-random", "-p", "fp32,int8", "-o", str(out), "-q"]) == 0
    assert "onnx/model.onnx, onnx/model_quantized.onnx" in capsys.readouterr().out
    assert build.main(["-m", "lfm2-tiny-random", "-p", "int4", "-o", str(out), "-q", "--add"]) == 0
    manifest = read_manifest(out)
    assert manifest.names == ["cpu-fp32", "cpu-int8", "cpu-int4"]
    assert manifest.get("cpu-int4").built_with["command"].endswith("-p int4 -o " + str(out) + " -q --add")
    assert all(v.verify is None for v in manifest.variants)

    assert verify.main([str(out), "--reference", "lfm2-tiny-random", "--precision", "int4", "--steps", "2"]) == 0
    stored = read_manifest(out)
    assert stored.get("cpu-int4").verify["passed"] is True and stored.get("cpu-int4").verify["steps"] == 2
    assert stored.get("cpu-fp32").verify is None

    capsys.readouterr()
    for argv, needle in [
        (["-p", "int4", "--add", "--overwrite"], "choose one"),
        (["-p", "int4", "--add"], "already holds cpu-int4"),
        (["-p", "fp32,fp32", "--overwrite"], "each precision once"),
        (["-p", "fp32,bf16", "--overwrite"], "-p bf16 -e cpu"),
    ]:
        assert build.main(["-m", "lfm2-tiny-random", "-o", str(out), "-q", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err
    assert read_manifest(out).names == ["cpu-fp32", "cpu-int8", "cpu-int4"]  # refusals left it as it was


@pytest.mark.cuda
@pytest.mark.skipif("CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers(),
                    reason="needs onnxruntime-gpu and a CUDA device")
def test_cuda_variant_of_a_multi_variant_folder(multi, factory, tiny_checkpoint):
    """ep='cuda' picks the CUDA fp16 variant, which runs as a single-variant CUDA export does."""
    from lfm2_onnx import Lfm2Model

    prompt = [1, 5, 6, 8, 9]
    model = Lfm2Model.load(multi, "cuda", max_length=128)
    assert model.layout.onnx_path == multi / "onnx" / "model_fp16.onnx"
    alone = Lfm2Model.load(factory.export(tiny_checkpoint, "fp16", "cuda"), "cuda", max_length=128)
    assert model.generate_ids([prompt], 16) == alone.generate_ids([prompt], 16)
