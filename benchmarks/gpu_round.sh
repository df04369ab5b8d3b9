#!/usr/bin/env bash
# One measured round on a CUDA machine (the device): random-weight LFM2-350M / LFM2-1.2B exports
# (fp16 and q4f16), the CUDA tests, memcpy check, kernel profile, then the runtime benchmark against
# onnxruntime-genai. Steps: build | check | bench (default: all).
#   bash benchmarks/gpu_round.sh MODELS_DIR OUT_DIR [build] [check] [bench]
set -u
models=$1; out=$2; shift 2; steps=${*:-build check bench}; work=${WORK:-/tmp/gpu-round}
mkdir -p "$out" "$work"
has() { [[ " $steps " == *" $1 "* ]]; }
if has build; then
  for m in LFM2-350M LFM2-1.2B; do
    [ -d "$work/ck-$m" ] || python3 -m lfm2_onnx.builder.random_checkpoint "$models/$m" -o "$work/ck-$m"
    [ -d "$work/$m-fp16" ] || python3 -m lfm2_onnx.build -i "$work/ck-$m" -o "$work/$m-fp16" -p fp16 -e cuda -q
    [ -d "$work/$m-q4f16" ] || python3 -m lfm2_onnx.build -i "$work/ck-$m" -o "$work/$m-q4f16" -p int4 -e cuda -q
  done
fi
if has check; then
  python3 -m pytest tests/test_lfm2_model.py tests/test_runtime_graphs.py -q -m cuda -p no:cacheprovider 2>&1 | grep -v "^  " | tail -25
  python3 benchmarks/memcpy_nodes.py "$work/LFM2-350M-fp16" 2>&1 | tail -4
  python3 benchmarks/memcpy_nodes.py "$work/LFM2-350M-q4f16" 2>&1 | tail -4
  for f in LFM2-350M-fp16 LFM2-350M-q4f16; do
    python3 benchmarks/kernel_profile.py "$work/$f" 2>&1 | tee "$out/profile-$f.txt" | grep -v "^    "
  done
fi
if has bench; then
  for f in ${FOLDERS:-LFM2-350M-fp16 LFM2-1.2B-fp16 LFM2-350M-q4f16 LFM2-1.2B-q4f16}; do
    for b in ${BATCHES:-1}; do
      python3 -m lfm2_onnx.bench "$work/$f" --ep cuda --prompt-len 1024 --gen 128 --batch "$b" --compare-genai \
        --json "$out/bench-$f-b$b.json" 2>&1 | tail -6
    done
  done
fi
if has int8; then  # q8f16: build, verify against transformers on the GPU, benchmark next to genai
  for m in LFM2-350M LFM2-1.2B; do
    [ -d "$work/ck-$m" ] || python3 -m lfm2_onnx.builder.random_checkpoint "$models/$m" -o "$work/ck-$m"
    [ -d "$work/$m-q8f16" ] || python3 -m lfm2_onnx.build -i "$work/ck-$m" -o "$work/$m-q8f16" -p int8 -e cuda -q
    python3 -m lfm2_onnx.verify "$work/$m-q8f16" --reference "$work/ck-$m" --ep cuda 2>&1 | tail -4
    python3 -m lfm2_onnx.bench "$work/$m-q8f16" --ep cuda --prompt-len 1024 --gen 128 --compare-genai \
      --json "$out/bench-$m-q8f16-b1.json" 2>&1 | grep -v "Warning\|W:onnxruntime" | tail -6
  done
fi
