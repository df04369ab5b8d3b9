#!/usr/bin/env bash
# Runtime benchmark on a CUDA machine: our runtime vs onnxruntime-genai on the same fp16 exports.
#   bash benchmarks/runtime_gpu.sh MODELS_DIR OUT_DIR   (MODELS_DIR holds LFM2-350M/ and LFM2-1.2B/ configs)
set -u
models=${1:-../shared/models}; out=${2:-bench-out}; work=${WORK:-/tmp/runtime-bench}
mkdir -p "$out" "$work"
for m in LFM2-350M LFM2-1.2B; do
  [ -d "$work/ck-$m" ] || python3 -m lfm2_onnx.builder.random_checkpoint "$models/$m" -o "$work/ck-$m"
  [ -d "$work/$m" ] || python3 -m lfm2_onnx.build -i "$work/ck-$m" -o "$work/$m" -p fp16 -e cuda -q
done
python3 -m pytest tests/test_lfm2_model.py -q -m cuda -p no:cacheprovider 2>&1 | tail -5
for m in LFM2-350M LFM2-1.2B; do
  for b in ${BATCHES:-1 8 32}; do
    python3 -m lfm2_onnx.bench "$work/$m" --ep cuda --prompt-len 1024 --gen 128 --batch "$b" --compare-genai \
      --json "$out/bench-$m-b$b.json"
  done
done
