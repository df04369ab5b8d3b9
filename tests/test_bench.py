"""lfm2_onnx.bench: the CLI runs end to end on CPU, says what it is doing, its probe stays small, and
--genai-folder runs onnxruntime-genai on another export (timings are not asserted)."""

from __future__ import annotations

import json

import numpy as np

from lfm2_onnx import bench


def test_cpu_probe_buffer_is_capped(monkeypatch):
    sizes = []
    real_ones = np.ones
    monkeypatch.setattr(bench.np, "ones", lambda n, dtype: sizes.append(n * np.dtype(dtype).itemsize)
                        or real_ones(n, dtype))
    for weights in (1 << 20, 1 << 34):  # a tiny model and a 16 GiB one
        assert bench.read_bandwidth(weights, seconds=0.01) > 0
    assert sizes == [bench.CPU_PROBE_BYTES[0], bench.CPU_PROBE_BYTES[1]]


def test_cpu_bench_prints_progress_and_a_floor(tiny_export, capsys):
    assert bench.main([str(tiny_export), "--prompt-len", "8", "--gen", "4", "--runs", "1"]) == 0
    out, err = capsys.readouterr()
    assert "running ours" in err and "measuring memory bandwidth" in err
    ours = next(line for line in out.splitlines() if line.startswith("ours"))
    floor = next(line for line in out.splitlines() if line.startswith("floor"))
    assert float(ours.split()[2]) > 0 and "read bandwidth" in floor and float(floor.split()[1]) > 0


def test_genai_folder_runs_genai_on_the_other_export(tiny_export, factory, tmp_path):
    other = factory.export(factory.checkpoint(seed=1))  # another export of a model with the same vocabulary
    out = tmp_path / "bench.json"
    assert bench.main([str(tiny_export), "--prompt-len", "4", "--gen", "3", "--runs", "1",
                       "--genai-folder", str(other), "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"ours", "genai-folder"}
    for engine in results.values():
        assert "error" not in engine, engine
        assert engine["new_tokens"] == 3 and engine["tokens_per_s"] > 0


def test_genai_folder_of_another_vocabulary_is_refused(tiny_export, factory, capsys):
    other = factory.export(factory.checkpoint(vocab_size=1024))
    assert bench.main([str(tiny_export), "--genai-folder", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --genai-folder ") and "another vocabulary" in err and err.count("\n") == 1
