#!/usr/bin/env bash
# Run the main job and the benchmarks on a CUDA device; without one, say so and exit 0.
#
#   bash benchmarks/gpu_run.sh [OUT]          # OUT defaults to benchmarks/out/gpu
#   PYTHON=/path/to/venv/bin/python bash benchmarks/gpu_run.sh
#
# Writes under OUT: main_job/ (the `interp run analyses/ioi_circuit.toml` results, figures, report.md),
# one JSON per benchmark, and a .log per step. Benchmarks without a --device option load the model with
# interp.load_model's default device, which is CUDA when present. A failing step is reported and the
# others still run; the exit status is 1 if any step failed.
set -u
PY=${PYTHON:-python}
OUT=${1:-benchmarks/out/gpu}
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_run: skipped: no CUDA device here (torch.cuda.is_available() is False); nothing was run or written"
  exit 0
fi
"$PY" -c "import torch; print('gpu_run:', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
mkdir -p "$OUT"
failed=0
step() {
  local name=$1; shift
  echo "== $name: $*"
  local t0=$SECONDS
  if "$@" > "$OUT/$name.log" 2>&1; then
    echo "   ok ($((SECONDS - t0)) s)"
  else
    echo "   FAILED ($((SECONDS - t0)) s); see $OUT/$name.log"; failed=1
  fi
}

step main_job      "$PY" -m interp.cli run analyses/ioi_circuit.toml --device cuda --out "$OUT/main_job"
step generate      "$PY" benchmarks/bench_generate.py --device cuda --batch 8 --prompt-len 16 --new 64 --reps 5 \
                     --out "$OUT/generate.json"
step generate_bf16 "$PY" benchmarks/bench_generate.py --device cuda --dtype bfloat16 --batch 8 --prompt-len 16 \
                     --new 64 --reps 5 --skip-nocache --out "$OUT/generate_bf16.json"
step steering      "$PY" benchmarks/bench_steering.py --reps 5 --out "$OUT/steering.json"
step patching      "$PY" benchmarks/bench_patching.py --n 32 --reps 2 --out "$OUT/patching.json"
step edge_eval     "$PY" benchmarks/bench_edge_eval.py --reps 3 --out "$OUT/edge_eval.json"
step gating        "$PY" benchmarks/bench_gating.py --prompts 32 --masks 3 --reps 3 --fit-steps 0
step sae           "$PY" benchmarks/bench_sae.py --steps 4 --batch 2048 --reps 2 --json "$OUT/sae.json"
step cache         "$PY" benchmarks/bench_cache.py --reps 3 --no-peak
step sinks         "$PY" benchmarks/bench_sinks.py --lengths 512 1024 --n 2 --repeats 2
echo "gpu_run: outputs under $OUT"
exit $failed
