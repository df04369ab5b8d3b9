"""LFM2-VL with one image, ours next to transformers eager in one run: vision encoder latency, TTFT, TPOT.

    python benchmarks/vl_generate.py --ep cuda                  # LFM2-VL-450M shapes, random weights, fp16
    python benchmarks/vl_generate.py --ep cpu --tiny            # lfm2-vl-tiny-random, fp32: a smoke run

The checkpoint is seeded random weights in the shapes of --config (builder's random_checkpoint, as
LiquidAI's are stored: bf16), or lfm2-vl-tiny-random with --tiny; our folder is built from it
(lfm2_onnx.builder.export, --precision, default fp16 on cuda and fp32 on cpu) and transformers'
Lfm2VlForConditionalGeneration loads the same checkpoint at the same dtype with eager attention.

Images: a 512x512 one (a single 32x32-patch view, 256 image tokens) and a 1024x768 one (W x H: LFM2-VL-450M
splits it into 3 x 2 tiles of 512, 1536 image tokens; every patch grid is a multiple of the downsample
factor, so transformers 5.17 takes them too). Both sides get the same pixel values, masks and token ids
from our processor (lfm2_onnx.vision, bit-identical to transformers'; its own time is shown apart).

- vision encoder: one run of our vision_encoder graph (onnxruntime, inputs from and features to the host)
  vs transformers' get_image_features (tensors already on the device), median of --repeats.
- TTFT / TPOT: the chat prompt with the 512x512 image (--generate-image to change), greedy, exactly
  --new-tokens tokens (eos ignored): ours through the runtime (vision encoder, embeddings, prefill, decode
  steps; one warm-up run first) vs transformers' generate() with a streamer stamping each token; TTFT is
  the time to the first new token, TPOT the mean time per token after it; medians of --runs.
- check: cosine of the image features (ours vs transformers, same dtype) and how many leading greedy
  tokens agree; a benchmark, not a test (fp16 kernels may legitimately differ).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from lfm2_onnx.builder.export import export
from lfm2_onnx.builder.options import BuildOptions
from lfm2_onnx.chat import ChatTemplate
from lfm2_onnx.vision import Lfm2VlProcessor
from lfm2_onnx.vision.chat import vl_chat_inputs

REPO = Path(__file__).resolve().parents[1]
IMAGES = {"512x512": (512, 512), "1024x768": (768, 1024)}  # name (W x H) -> (height, width)
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
QUESTION = "Describe this image in detail."


def checkpoint(args, dest: Path) -> Path:
    if (dest / "config.json").exists():  # --work reused: the same seeded weights
        return dest
    if args.tiny:
        from lfm2_onnx.builder.tiny import write_tiny_checkpoint

        return write_tiny_checkpoint(dest, vl=True)
    from lfm2_onnx.builder.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(args.config, dest, std=args.std)


def picture(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic RGB picture: smooth gradients plus noise (the content does not change the work)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


class TokenClock:
    """A generate() streamer that stamps each put(): the prompt first, then one call per new token."""

    def __init__(self):
        self.stamps: list[float] = []
        self.tokens: list[int] = []

    def put(self, value):
        self.stamps.append(time.perf_counter())
        if len(self.stamps) > 1:
            self.tokens.extend(int(t) for t in value.reshape(-1))

    def end(self):
        pass


class Transformers:
    def __init__(self, ckpt: Path, precision: str, device: str):
        self.device = device
        self.dtype = TORCH_DTYPES[precision]
        self.model = transformers.Lfm2VlForConditionalGeneration.from_pretrained(
            ckpt, dtype=self.dtype, attn_implementation="eager").to(device).eval()

    def tensors(self, images) -> dict:
        return {"pixel_values": torch.from_numpy(images.pixel_values).to(self.device, self.dtype),
                "pixel_attention_mask": torch.from_numpy(images.pixel_attention_mask.astype(np.int64)).to(self.device),
                "spatial_shapes": torch.from_numpy(images.spatial_shapes).to(self.device)}

    def sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def image_features(self, feed: dict) -> torch.Tensor:
        with torch.no_grad():
            out = self.model.model.get_image_features(**feed)
        features = torch.cat(getattr(out, "pooler_output", out))
        self.sync()
        return features

    def generate(self, ids: list[int], feed: dict, new_tokens: int) -> tuple[float, float, list[int]]:
        clock = TokenClock()
        input_ids = torch.tensor([ids], device=self.device)
        start = time.perf_counter()
        with torch.no_grad():
            self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **feed,
                                max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                streamer=clock, pad_token_id=0)
        stamps = clock.stamps[1:]
        return stamps[0] - start, (stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1), clock.tokens


class Ours:
    def __init__(self, folder: Path, ep: str, capacity: int):
        from lfm2_onnx.lfm2_model import Lfm2Model

        self.model = Lfm2Model.load(folder, ep=ep, max_length=capacity)

    def image_features(self, images) -> np.ndarray:
        return self.model.sessions.vision(images)  # the runtime's vision encoder session, as prefill runs it

    def generate(self, ids: list[int], images, new_tokens: int) -> tuple[float, float, list[int]]:
        from lfm2_onnx.engine import Request
        from lfm2_onnx.sampling import SamplingParams

        model = self.model
        request = Request(list(ids), new_tokens, SamplingParams(), eos_token_ids=frozenset(), images=images)
        start = time.perf_counter()
        stamps = []
        with model._lock:
            model.engine.add(request)
            while not request.finished:
                model.engine.step()
                while len(stamps) < len(request.generated):
                    stamps.append(time.perf_counter())
        return stamps[0] - start, (stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1), list(request.generated)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def agreeing_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ep", choices=["cpu", "cuda"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="lfm2-vl-tiny-random instead of --config's shapes")
    p.add_argument("--config", type=Path, default=REPO.parent / "shared" / "models" / "LFM2-VL-450M",
                   help="folder with the real LFM2-VL config, tokenizer and processor files")
    p.add_argument("--precision", help="our export's precision and transformers' dtype (default fp16 on cuda, fp32 "
                                       "on cpu)")
    p.add_argument("--std", type=float, default=0.02, help="std of the random weights (transformers' init range)")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=10, help="vision encoder runs per side (median)")
    p.add_argument("--runs", type=int, default=3, help="generations per side (median)")
    p.add_argument("--generate-image", choices=list(IMAGES), default="512x512")
    p.add_argument("--work", type=Path, help="keep the checkpoint and folder here (reused when present)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    precision = args.precision or ("fp16" if args.ep == "cuda" else "fp32")
    if precision not in TORCH_DTYPES:
        p.error(f"--precision must be one of {', '.join(TORCH_DTYPES)} (transformers runs the same dtype)")
    device = "cuda" if args.ep == "cuda" else "cpu"

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        started = time.perf_counter()
        kind = "tiny" if args.tiny else f"{args.config.name}-std{args.std}"
        ckpt = checkpoint(args, work / f"ckpt-{kind}")
        out = work / f"onnx-{kind}-{precision}-{args.ep}"
        if not (out / "genai_config.json").exists():
            export(ckpt, out, BuildOptions(precision, args.ep), progress=False)
        print(f"checkpoint + {precision} {args.ep} folder: {time.perf_counter() - started:.1f} s", flush=True)

        processor, template = Lfm2VlProcessor.from_folder(out), ChatTemplate.from_folder(out)  # no sessions yet
        cases = {}
        for seed, (name, (height, width)) in enumerate(IMAGES.items()):
            image = picture(height, width, seed)
            messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                                     {"type": "text", "text": QUESTION}]}]
            inputs, _ = vl_chat_inputs(processor, template, messages)
            preprocess = median_ms(lambda: processor.image_processor([image]), max(args.repeats // 2, 1))
            cases[name] = (inputs, preprocess)

        capacity = max(len(inputs.input_ids) for inputs, _ in cases.values()) + args.new_tokens + 8
        ours = Ours(out, args.ep, capacity)
        theirs = Transformers(ckpt, precision, device)
        rows = []
        for name, (inputs, preprocess) in cases.items():
            images = inputs.images
            feed = theirs.tensors(images)
            row = {"image": name, "tiles": len(images.spatial_shapes), "image tokens": inputs.num_image_tokens,
                   "prompt tokens": len(inputs.input_ids), "preprocess ms (ours, numpy)": round(preprocess, 2)}
            row["vision ms ours"] = round(median_ms(lambda: ours.image_features(images), args.repeats), 2)
            row["vision ms transformers"] = round(median_ms(lambda: theirs.image_features(feed), args.repeats), 2)
            row["feature cosine"] = round(cosine(ours.image_features(images),
                                                 theirs.image_features(feed).float().cpu().numpy()), 6)
            rows.append(row)
            print(json.dumps(row), flush=True)

        inputs, _ = cases[args.generate_image]
        feed = theirs.tensors(inputs.images)
        results = {}
        for side, run in (("ours", lambda: ours.generate(inputs.input_ids, inputs.images, args.new_tokens)),
                          ("transformers", lambda: theirs.generate(inputs.input_ids, feed, args.new_tokens))):
            run()  # warm-up (CUDA graphs, cuDNN/cuBLAS choices)
            runs = [run() for _ in range(args.runs)]
            results[side] = {"ttft ms": round(statistics.median(r[0] for r in runs) * 1000, 2),
                             "tpot ms": round(statistics.median(r[1] for r in runs) * 1000, 3),
                             "tokens": len(runs[0][2]), "ids": runs[0][2]}
            print(side, json.dumps({k: v for k, v in results[side].items() if k != "ids"}), flush=True)
        agree = agreeing_prefix(results["ours"]["ids"], results["transformers"]["ids"])

    model = "lfm2-vl-tiny-random" if args.tiny else f"{args.config.name} shapes, random weights (std {args.std})"
    print(f"\n{model}; {precision} on {args.ep}; onnxruntime vs transformers {transformers.__version__} eager "
          f"(torch {torch.__version__})")
    print("| image (W x H) | tiles | image tokens | preprocess ms (ours) | vision encoder ms ours | "
          "transformers | feature cosine |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['image']} | {r['tiles']} | {r['image tokens']} | {r['preprocess ms (ours, numpy)']} | "
              f"{r['vision ms ours']} | {r['vision ms transformers']} | {r['feature cosine']} |")
    prompt = len(inputs.input_ids)
    print(f"\nchat prompt with the {args.generate_image} image ({prompt} tokens), {args.new_tokens} new tokens, "
          f"greedy; median of {args.runs}")
    print("| | TTFT ms | TPOT ms |")
    print("|---|---|---|")
    for side in ("ours", "transformers"):
        print(f"| {side} | {results[side]['ttft ms']} | {results[side]['tpot ms']} |")
    print(f"leading greedy tokens equal: {agree} of {args.new_tokens}")
    if args.json:
        args.json.write_text(json.dumps({"vision": rows, "generate": {k: {kk: vv for kk, vv in v.items() if kk != "ids"}
                                                                      for k, v in results.items()},
                                         "agreeing tokens": agree}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
