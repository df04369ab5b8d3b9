"""LFM2-VL vision encoder at real shapes: accuracy of each precision and latency, next to transformers.

    python benchmarks/vision_encoder.py --config ../shared/models/LFM2-VL-450M/config.json --ep cpu
    python benchmarks/vision_encoder.py --config ../shared/models/LFM2-VL-450M/config.json --ep cuda \
        --precisions fp16 bf16 int4

Seeded random bf16 weights (transformers' own initialisation) in the config's shapes, saved the way
transformers 5 saves them; our vision encoder built at each precision (int8/int4 exports keep it
float: fp32 on cpu, fp16 on cuda).

Accuracy: one batch of four images padded to 1024 slots as the processor pads them (a 512x512 tile:
32x32 patches, the most one image has; a 384x512 view: 24x32; a 256x256 thumbnail: 16x16; a 96x640
strip: 6x40), against transformers fp32 (eager attention) on the same device: max |diff| and cosine of
the image features, over all tokens and for the worst token.

Latency (median of --repeats, after a warm-up), onnxruntime vs transformers eager at the export's
activation dtype in the same run (on cpu, transformers runs fp32 only: its fp16 CPU kernels are not a
peer): one 512x512 image, and the four-image batch. onnxruntime's time includes copying inputs from
and features to the host; transformers' does not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import torch
import transformers

from lfm2_onnx.builder.options import BuildOptions
from lfm2_onnx.builder.vision_encoder import VisionSpec, build_vision_encoder
from lfm2_onnx.builder.weights import Checkpoint
from lfm2_onnx.builder.writer import save_with_external_data

BATCHES = {"one 512x512 image": [(32, 32)], "four images": [(32, 32), (24, 32), (16, 16), (6, 40)]}
SLOTS = 1024  # max_num_patches: the processor pads every image to it
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def checkpoint(config_path: Path, folder: Path) -> transformers.Lfm2VlForConditionalGeneration:
    raw = json.loads(config_path.read_text())
    config = transformers.Lfm2VlConfig(**{k: v for k, v in raw.items() if k != "model_type"})
    config.text_config.num_hidden_layers = 2  # the decoder is not measured here; keep the file small
    config.text_config.layer_types = ["conv", "full_attention"]
    config.vision_config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.Lfm2VlForConditionalGeneration(config).eval().to(torch.bfloat16)
    model.save_pretrained(folder)  # bf16, as LiquidAI's checkpoints are; the reference runs these weights in fp32
    return model.float()


def images(spec: VisionSpec, grids: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(1)
    pixels = torch.zeros(len(grids), SLOTS, spec.patch_dim)
    mask = torch.zeros(len(grids), SLOTS, dtype=torch.int64)
    for i, (h, w) in enumerate(grids):
        pixels[i, :h * w] = torch.rand(h * w, spec.patch_dim, generator=g) * 2 - 1  # normalised pixels
        mask[i, :h * w] = 1
    return {"pixel_values": pixels.numpy(), "pixel_attention_mask": mask.numpy(),
            "spatial_shapes": np.array(grids, dtype=np.int64)}


def with_float32_output(model: ir.Model) -> ir.Model:
    """Cast image_features to float32 for reading here (numpy has no bfloat16; the cast is exact)."""
    out = model.graph.outputs[0]
    if out.dtype != ir.DataType.FLOAT:
        node = ir.node("Cast", [out], attributes={"to": ir.DataType.FLOAT})
        model.graph.append(node)
        out.name = "image_features_io"
        node.outputs[0].name, node.outputs[0].dtype, node.outputs[0].shape = "image_features", ir.DataType.FLOAT, out.shape
        model.graph.outputs[0] = node.outputs[0]
    return model


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2)


def compare(got: np.ndarray, ref: np.ndarray) -> dict:
    got, ref = got.astype(np.float64), ref.astype(np.float64)
    per_token = (got * ref).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
    return {"max_abs": float(np.abs(got - ref).max()), "ref_max_abs": float(np.abs(ref).max()),
            "cosine": float((got * ref).sum() / np.linalg.norm(got) / np.linalg.norm(ref)),
            "worst_token_cosine": float(per_token.min())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--ep", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precisions", nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    precisions = args.precisions or (["fp32", "fp16", "int4"] if args.ep == "cpu" else ["fp16", "bf16", "int4"])
    device = "cuda" if args.ep == "cuda" else "cpu"
    provider = "CUDAExecutionProvider" if args.ep == "cuda" else "CPUExecutionProvider"

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        reference = checkpoint(args.config, folder).to(device)
        spec = VisionSpec.from_config(json.loads((folder / "config.json").read_text()))
        feeds = {name: images(spec, grids) for name, grids in BATCHES.items()}

        def run_torch(feed):
            with torch.no_grad():
                out = reference.model.get_image_features(**{k: torch.from_numpy(v).to(device) for k, v in feed.items()})
            if device == "cuda":
                torch.cuda.synchronize()
            return torch.cat(out.pooler_output)

        accuracy_feed = feeds["four images"]
        ref = run_torch(accuracy_feed).float().cpu().numpy()
        print(f"device {device}; accuracy batch {BATCHES['four images']} -> {ref.shape[0]} image tokens x {ref.shape[1]}")
        results = {}
        for precision in precisions:
            opts = BuildOptions(precision, args.ep)
            path = folder / f"vision_{precision}.onnx"
            model = with_float32_output(build_vision_encoder(spec, Checkpoint(folder), opts))
            save_with_external_data(model, path, progress=False)
            session = ort.InferenceSession(str(path), providers=[provider])
            row = {"activations": opts.float_precision, **compare(session.run(None, accuracy_feed)[0], ref)}
            torch_precision = opts.float_precision if device == "cuda" else "fp32"
            reference.to(TORCH_DTYPES[torch_precision])
            for name, feed in feeds.items():
                row[f"{name}: onnxruntime ms"] = timed(lambda: session.run(None, feed), args.repeats)
                row[f"{name}: transformers eager {torch_precision} ms"] = timed(lambda: run_torch(feed), args.repeats)
            reference.to(torch.float32)
            results[precision] = row
            print(precision, json.dumps(row), flush=True)
            del session
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
