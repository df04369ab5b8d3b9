"""lfm2_onnx.bench: the CLI runs end to end on CPU, says what it is doing, and its probe stays small."""

from __future__ import annotations

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
