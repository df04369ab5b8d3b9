"""LFM2-VL image preprocessing time: lfm2_onnx.vision (numpy) vs transformers' Lfm2VlImageProcessor
(torchvision), on the same images, in one run.

    python benchmarks/vl_processor.py [--folder ../shared/models/LFM2-VL-450M] [--repeat 5] [--threads 1 2]

transformers runs in the reference venv (tests/vl_reference/install.sh; LFM2_VL_REFERENCE_PYTHON or
.venv-vlref), in a subprocess started by this script; both sides time only the image processor call on
an already-decoded RGB uint8 array (best of --repeat, after one warm-up), with the same number of threads
(torch.set_num_threads; lfm2_onnx.vision.resize.MAX_THREADS), once per --threads value.
Both outputs are compared too (max |Δ| of pixel_values).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIZES = [(512, 512), (768, 1024), (1500, 2000), (3000, 4000)]

REFERENCE = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np, torch
from transformers.models.lfm2_vl import Lfm2VlImageProcessor
torch.set_num_threads(int(sys.argv[3]))
settings, repeat = json.loads(sys.argv[1]), int(sys.argv[2])
processor = Lfm2VlImageProcessor(**settings)
times, outputs = {}, {}
for path in sys.argv[4:]:
    image = np.load(path)
    processor([image], return_tensors="np")
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = processor([image], return_tensors="np")
        best = min(best, time.perf_counter() - start)
    times[path] = best
    np.save(path + ".ref.npy", np.asarray(out["pixel_values"]))
print(json.dumps(times))
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=str(REPO.parent / "shared/models/LFM2-VL-450M"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)

    from lfm2_onnx.vision import Lfm2VlImageProcessor, resize

    ours = Lfm2VlImageProcessor.from_folder(args.folder)
    s = ours.settings
    settings = {k: getattr(s, k) for k in ("downsample_factor", "do_image_splitting", "min_tiles", "max_tiles",
                                           "use_thumbnail", "min_image_tokens", "max_image_tokens",
                                           "encoder_patch_size", "tile_size", "max_pixels_tolerance", "resample",
                                           "do_rescale", "rescale_factor", "do_normalize")}
    settings.update(image_mean=list(s.image_mean), image_std=list(s.image_std))
    python = os.environ.get("LFM2_VL_REFERENCE_PYTHON") or str(REPO / ".venv-vlref/bin/python")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for h, w in SIZES:
            paths.append(f"{tmp}/{h}x{w}.npy")
            np.save(paths[-1], rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        print("| threads | image (H x W) | tiles | lfm2_onnx.vision ms | transformers ms | max abs diff |")
        print("|---|---|---|---|---|---|")
        for threads in args.threads:
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            result = subprocess.run([python, "-c", REFERENCE, json.dumps(settings), str(args.repeat), str(threads),
                                     *paths], capture_output=True, text=True, env=env, check=True)
            theirs = json.loads(result.stdout.strip().splitlines()[-1])
            resize.MAX_THREADS = threads
            for (h, w), path in zip(SIZES, paths):
                image = np.load(path)
                ours([image])
                best = float("inf")
                for _ in range(args.repeat):
                    start = time.perf_counter()
                    out = ours([image])
                    best = min(best, time.perf_counter() - start)
                diff = float(np.abs(out.pixel_values - np.load(path + ".ref.npy")).max())
                print(f"| {threads} | {h} x {w} | {len(out.pixel_values)} | {best * 1000:.0f} | "
                      f"{theirs[path] * 1000:.0f} | {diff:g} |")

if __name__ == "__main__":
    sys.exit(main())
