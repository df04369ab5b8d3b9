"""genai_configs/: the golden genai_config.json files are current, complete, and what the builder writes."""

from __future__ import annotations

import json

import pytest

from conftest import REPO, SHARED_MODELS
from lfm2_onnx.builder.genai_config import make_genai_config
from lfm2_onnx.builder.goldens import goldens, main as goldens_main
from lfm2_onnx.builder.options import VALID_COMBINATIONS, BuildOptions
from lfm2_onnx.builder.spec import load_spec

GOLDEN_DIR = REPO / "genai_configs"


@pytest.fixture(scope="module")
def expected():
    if not SHARED_MODELS.is_dir():
        pytest.skip("../shared/models not present: the goldens are generated from its config.json files")
    return goldens(SHARED_MODELS)


def test_goldens_are_current(expected):
    stale = [str(rel) for rel, text in expected.items()
             if not (GOLDEN_DIR / rel).exists() or (GOLDEN_DIR / rel).read_text() != text]
    assert not stale, f"regenerate with: python -m lfm2_onnx.builder.goldens ({stale})"
    assert goldens_main(["--check"]) == 0


def test_goldens_cover_every_config_and_nothing_else(expected):
    on_disk = {p.relative_to(GOLDEN_DIR) for p in GOLDEN_DIR.rglob("*.json")}
    assert on_disk == set(expected)
    models = {rel.parts[0] for rel in expected}
    assert {"LFM2-350M", "LFM2-1.2B", "LFM2-2.6B", "LFM2.5-1.2B-Base"} <= models
    assert len(expected) == len(models) * len(VALID_COMBINATIONS)


@pytest.mark.parametrize("precision,ep", VALID_COMBINATIONS)
def test_builder_writes_exactly_the_genai_config(factory, tiny_checkpoint, precision, ep):
    """The export's genai_config.json is make_genai_config of its config.json: the goldens' function."""
    folder = factory.export(tiny_checkpoint, precision, ep)
    spec, _, generation = load_spec(tiny_checkpoint)
    written = json.loads((folder / "genai_config.json").read_text())
    assert written == make_genai_config(spec, BuildOptions(precision, ep), generation)
    decoder = written["model"]["decoder"]
    assert (folder / decoder["filename"]).is_file()
    assert decoder["inputs"]["past_conv_names"] == "past_conv.%d"
    assert decoder["outputs"]["present_conv_names"] == "present_conv.%d"
    assert decoder["layer_types"] == list(spec.layer_types)
    assert written["model"]["eos_token_id"] == [7, 2]


def test_search_defaults_come_from_generation_config():
    folder = SHARED_MODELS / "LFM2-1.2B"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    spec, _, generation = load_spec(folder)
    search = make_genai_config(spec, BuildOptions("fp16", "cuda"), {**generation, "temperature": 0.3,
                                                                     "top_p": 0.9, "repetition_penalty": 1.05})["search"]
    assert (search["temperature"], search["top_p"], search["repetition_penalty"]) == (0.3, 0.9, 1.05)
    assert "min_p" not in search  # onnxruntime-genai 0.18 rejects unknown search keys
