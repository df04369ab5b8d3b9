#!/usr/bin/env bash
# The serving round on a CUDA machine: random-weight LFM2-350M fp16, the server under load next to the
# offline benchmark, in one run (BENCHMARKS.md, "Serving").
#   bash benchmarks/serve_gpu_round.sh MODELS_DIR OUT_DIR     (MODELS_DIR holds LFM2-350M/ config)
# 1. the CUDA tests (engine buckets + graphs, runtime);
# 2. python -m lfm2_onnx.bench, prompt 512, 128 new tokens, batch 64 and batch 1;
# 3. benchmarks/serve_host.py: the engine's host work per row-token at 64 rows on CUDA (device waits
#    measured apart) and the event loop's per-token path (no HTTP) on this host's CPU;
# 4. python -m lfm2_onnx.serve --max-batch 64, then benchmarks/serve_load.py with 64 streaming clients
#    (3 requests each, in 8 client processes) and with 1 client (10 requests), same prompt length and
#    new tokens, each with the server's own view (--metrics); then the 64 clients again against a
#    server started with --prefill-wait-steps 0 (every arrival prefilled at the next step), to compare.
set -u
models=${1:-../shared/models}; out=${2:-serve-out}; work=${WORK:-/tmp/serve-round}; port=${PORT:-8011}
mkdir -p "$out" "$work"
python3 -c "import fastapi, uvicorn, prometheus_client, httpx" 2>/dev/null \
  || pip install -q "fastapi>=0.110" "uvicorn>=0.29" "prometheus-client>=0.20" "httpx>=0.27" "openai>=1.40"
python3 -c "from tokenizers.decoders import DecodeStream" 2>/dev/null || pip install -q "tokenizers>=0.21"
m=LFM2-350M; f="$work/$m-fp16"
[ -d "$work/ck-$m" ] || python3 -m lfm2_onnx.builder.random_checkpoint "$models/$m" -o "$work/ck-$m"
[ -d "$f" ] || python3 -m lfm2_onnx.build -i "$work/ck-$m" -o "$f" -p fp16 -e cuda -q
[ -n "${SKIP_TESTS:-}" ] || python3 -m pytest tests/test_engine.py tests/test_lfm2_model.py tests/test_runtime_graphs.py -q -m cuda -p no:cacheprovider \
  2>&1 | grep -v "^  " | tail -8
vocab=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['model']['vocab_size'])" "$f/genai_config.json")
for b in 64 1; do
  python3 -m lfm2_onnx.bench "$f" --ep cuda --prompt-len 512 --gen 128 --batch "$b" --json "$out/bench-b$b.json" \
    2>&1 | tail -4
done
python3 benchmarks/serve_host.py engine "$f" --ep cuda --rows 64 --prompt-len 512 --steps 100 --json "$out/host-engine.json"
python3 benchmarks/serve_host.py stream "$f" --rows 64 --json "$out/host-stream.json"
python3 benchmarks/serve_host.py stream "$f" --rows 64 --chat --json "$out/host-stream-chat.json"
: > "$out/server.log"
serve() {  # serve EXTRA_ARGS...: start the server, wait until it is healthy
  python3 -m lfm2_onnx.serve "$f" --ep cuda --port "$port" --max-batch 64 --max-length 1024 --log-level warning "$@" \
    >> "$out/server.log" 2>&1 &
  server=$!
  python3 - "$port" <<'PY'
import sys
from lfm2_onnx.serve import wait_until_healthy
try:
    wait_until_healthy(f"http://127.0.0.1:{sys.argv[1]}", timeout=600)
except (RuntimeError, TimeoutError) as e:
    sys.exit(str(e))
PY
}
trap 'kill $server 2>/dev/null' EXIT
load="python3 benchmarks/serve_load.py --url http://127.0.0.1:$port --prompt-len 512 --max-tokens 128 --vocab $vocab --metrics"
serve
$load --clients 64 --rounds 3 --procs 8 --json "$out/serve-c64.json"
$load --clients 1 --rounds 10 --json "$out/serve-c1.json"
python3 - "$port" > "$out/metrics.txt" <<'PY'
import sys, urllib.request
print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode())
PY
grep -E "^lfm2_(slots|generation_tokens_total|requests_total)" "$out/metrics.txt"
kill $server; wait $server 2>/dev/null
serve --prefill-wait-steps 0
$load --clients 64 --rounds 3 --procs 8 --json "$out/serve-c64-wait0.json"
tail -3 "$out/server.log"
