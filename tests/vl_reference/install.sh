#!/usr/bin/env bash
# Creates the reference environment for the LFM2-VL processor tests (tests/test_image_processing.py):
# transformers' Lfm2VlImageProcessor resizes with torchvision, and PyPI's torchvision can't load beside
# the main venv's CPU torch 2.13 (its C ops are missing: 'operator torchvision::nms does not exist',
# which then breaks every transformers import). So the reference runs in its own venv, called by the
# tests through a subprocess (tests/vl_reference/reference.py). torch 2.14.1 + torchvision 0.29.1 is
# the pair that loads together on x86_64 (a CUDA build, used on the CPU here).
# Usage: bash tests/vl_reference/install.sh [VENV]   (default: .venv-vlref at the repo root)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${1:-$repo/.venv-vlref}"
case "$(uname -m)" in
    x86_64) torch_pair=(torch==2.14.1 torchvision==0.29.1) ;;
    aarch64) torch_pair=(torch==2.9.1 torchvision==0.24.1) ;;   # a CPU build there
    *) echo "error: no known torch/torchvision pair for $(uname -m); install one into $venv by hand" >&2; exit 2 ;;
esac
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# transformers pinned to the version the processor was written against (its Lfm2Vl processor is the spec).
"$venv/bin/python" -m pip install -q "${torch_pair[@]}" "transformers==5.24.0" pillow numpy tokenizers jinja2
"$venv/bin/python" -c "import torchvision.transforms.v2.functional, transformers; print('vl reference venv ready:', transformers.__version__)"
