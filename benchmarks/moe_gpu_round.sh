#!/usr/bin/env bash
# LFM2-8B-A1B shape on a CUDA machine: random bf16 weights, our builder and onnxruntime-genai's on the
# same checkpoint (time, peak RSS, size), the CUDA MoE tests, then the runtime benchmark next to
# onnxruntime-genai on the same files. Steps: ckpt | build | test | bench | genai-build (default: all).
# The 8B-A1B metadata has no tokenizer: put LFM2's (e.g. LFM2-1.2B's tokenizer files) in its folder first.
#   bash benchmarks/moe_gpu_round.sh MODELS_DIR OUT_DIR [steps...]
set -u
models=$1; out=$2; shift 2; steps=${*:-ckpt build test bench genai-build}; work=${WORK:-/tmp/moe-round}
mkdir -p "$out" "$work"
has() { [[ " $steps " == *" $1 "* ]]; }
ck="$work/ck-8b"
rss() {  # rss LABEL CMD...: wall time and peak RSS of CMD (its children included)
  local label=$1; shift
  /usr/bin/time -f "$label: %e s, peak RSS %M KB" "$@" > "$out/$label.log" 2>&1; tail -1 "$out/$label.log"
}
if has ckpt; then
  [ -d "$ck" ] || python3 -m lfm2_onnx.builder.random_checkpoint "$models/LFM2-8B-A1B" -o "$ck"
  du -sh "$ck"
fi
if has build; then
  [ -d "$work/ours-fp16" ] || rss ours-fp16 python3 -m lfm2_onnx.build -i "$ck" -o "$work/ours-fp16" -p fp16 -e cuda -q
  [ -d "$work/ours-q4f16" ] || rss ours-q4f16 python3 -m lfm2_onnx.build -i "$ck" -o "$work/ours-q4f16" -p int4 -e cuda -q
  du -sh "$work"/ours-*
fi
if has genai-build; then
  for p in fp16 int4; do  # onnxruntime-genai's builder, timed, then removed (disk)
    rss genai-$p python3 -m onnxruntime_genai.models.builder -i "$ck" -o "$work/genai-$p" -p $p -e cuda -c "$work/cache"
    du -sh "$work/genai-$p"; rm -rf "$work/genai-$p" "$work/cache"
  done
fi
if has test; then
  python3 -m pytest tests/test_moe.py -q -m cuda -p no:cacheprovider 2>&1 | grep -v "^  " | tail -8
fi
if has bench; then
  for f in ${FOLDERS:-ours-fp16 ours-q4f16}; do
    for b in ${BATCHES:-1 8 32}; do
      python3 -m lfm2_onnx.bench "$work/$f" --ep cuda --prompt-len 1024 --gen 128 --batch "$b" --compare-genai \
        --json "$out/bench-$f-b$b.json" 2>&1 | grep -v "Warning\|W:onnxruntime" | tail -7
    done
  done
fi
