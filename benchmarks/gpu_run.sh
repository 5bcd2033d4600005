#!/usr/bin/env bash
# GPU runs on a lent device machine (the workplace's `device` tool), not part of CI.
#
# The machine is bare apart from CUDA torch: the package's other dependencies travel as wheels
# in .whl/ and the real data files in .gpudata/ (both git-ignored, named in the tool's `carry`):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .whl anndata==...
#   (pandas must be < 3: anndata 0.12 cannot write h5ad under pandas 3, see results/gpu_h100.md)
#   mkdir -p .gpudata && cp ../shared/data/{kang2018_pbmc_ctrl_8donors,pbmc3k_seurat_labels,pbmc68k_reduced_counts}.h5ad .gpudata/
#
# The one command for a lent session (issue 20; under 10 minutes of device time, most important
# first, every step writing its results under $OUT as it goes):
#
#   bash benchmarks/gpu_run.sh graphs smoke epoch tests        # run with timeout_s=600
#
# Steps and their time limits (seconds; env vars override). A step starts only with at least 30 s
# left before DEADLINE (default 570 s after the script starts) and is cut at that deadline, so
# the whole call ends inside the device tool's 600 s limit; $OUT/run_summary.txt says what ran.
#   graphs  (GRAPHS_TIMEOUT=150)  one SCE2TM step on Kang shapes: plain vs graph-safe vs CUDA graphs,
#           fixed Sinkhorn, float32 solve, fused Adam, bf16 (gpu_graphs_step.py; GRAPHS_COMPILE=1
#           adds the torch.compile variants, a minute or more each) -> graphs_step.{json,md}
#   smoke   (SMOKE_TIMEOUT=200)   CLI fits on CUDA: float32, bf16, bf16 + torch.compile, --cuda-graphs,
#           backed, torchrun with nccl (SMOKE_EPOCHS=5) -> smoke/*.json, smoke/smoke.md
#   epoch   (EPOCH_TIMEOUT=240)   training epochs at EPOCH_CELLS=1000000 cells, in memory and backed,
#           with CUDA graphs (gpu_epoch_scale.py; EPOCH_VARIANTS="graphs eager" adds today's step,
#           ~60 s more) -> epoch_scale.{json,md}
#   tests   (TEST_TIMEOUT=120)    pytest on TESTS (default tests/test_gpu_path.py: the CUDA-only
#           tests of the graph path); TESTS=tests runs the whole suite with CUDA as the default device
#   scale   (SCALE_TIMEOUT=560)   bench_scale.py --device cuda at $SIZES (default "10000 100000") and
#           $MODES: the whole user path incl. setup (10^6 cells: ~6 min per mode, a session of its own)
#   profile (PROFILE_TIMEOUT=120) torch.profiler on one SCE2TM step (gpu_profile_step.py)
set -u
export PYTHONUNBUFFERED=1
START=$(date +%s)
DEADLINE=${DEADLINE:-570}
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$ROOT/src
export SCTOPIC_SHARED_DATA=$ROOT/.gpudata
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, anndata, scanpy; print('torch', torch.__version__, torch.cuda.get_device_name(), 'anndata', anndata.__version__)"

# run LIMIT CMD...: CMD under `timeout`, cut at the smaller of LIMIT and the time left
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
run() {
  local limit=$1; shift
  local l; l=$(left)
  [ "$l" -lt "$limit" ] && limit=$l
  [ "$limit" -lt 5 ] && { echo "no time left for: $*"; return 124; }
  timeout "$limit" "$@"
}

for step in "$@"; do
  t0=$(date +%s)
  if [ "$(left)" -lt 30 ]; then
    echo "== $step skipped: $(left) s left before the deadline" | tee -a "$OUT/run_summary.txt"
    continue
  fi
  rc=0
  case $step in
    graphs)
      extra=""; [ "${GRAPHS_COMPILE:-0}" = 1 ] && extra="--compile"
      run "${GRAPHS_TIMEOUT:-150}" python3 benchmarks/gpu_graphs_step.py --out "$OUT" $extra 2>&1 \
        | tee "$OUT/graphs_step.log" | grep -v "^USDT" | tail -30; rc=${PIPESTATUS[0]} ;;
    smoke)
      S=$OUT/smoke; mkdir -p "$S"
      K=.gpudata/kang2018_pbmc_ctrl_8donors.h5ad
      P=.gpudata/pbmc68k_reduced_counts.h5ad
      E=${SMOKE_EPOCHS:-5}
      end=$(( $(date +%s) + ${SMOKE_TIMEOUT:-200} ))
      fit() {  # NAME ARGS...: one fit within what is left of the step's time
        local name=$1; shift
        local l=$(( end - $(date +%s) ))
        [ "$l" -lt 10 ] && { echo "smoke: no time left for $name"; return; }
        run "$l" "$@" --out "/tmp/$name" --overwrite 2>&1 | tail -3
        cp "/tmp/$name/train.json" "$S/$name.json" 2>/dev/null || echo "no train.json for $name"
      }
      fit s_fp32 python3 -m sctopic fit $K --max-epochs $E --device cuda
      fit s_graphs python3 -m sctopic fit $K --max-epochs $E --device cuda --cuda-graphs
      fit s_bf16 python3 -m sctopic fit $K --max-epochs $E --device cuda --precision bf16
      fit s_nccl torchrun --nproc-per-node 1 -m sctopic fit $P --max-epochs 3 --backend nccl
      fit s_backed python3 -m sctopic fit $K --max-epochs 3 --device cuda --backed
      fit s_bf16_compile python3 -m sctopic fit $K --max-epochs $E --device cuda --precision bf16 --compile
      python3 benchmarks/gpu_smoke_summary.py "$S" ;;
    epoch)
      n=${EPOCH_CELLS:-1000000}
      mkdir -p benchmarks/work/scale
      f=benchmarks/work/scale/kang_$n.h5ad
      [ -f "$f" ] || run 120 python3 benchmarks/make_scaled.py --n-cells "$n" --out "$f" --source .gpudata/kang2018_pbmc_ctrl_8donors.h5ad | tail -1
      run "${EPOCH_TIMEOUT:-240}" python3 benchmarks/gpu_epoch_scale.py --data "$f" --out "$OUT" \
        --variants ${EPOCH_VARIANTS:-graphs} 2>&1 | tee "$OUT/epoch_scale.log" | grep -v "^USDT" | tail -20
      rc=${PIPESTATUS[0]} ;;
    tests)
      run "${TEST_TIMEOUT:-120}" python3 -m pytest -v -n "${TEST_WORKERS:-4}" -p no:cacheprovider --timeout 200 \
        --tb=short ${TESTS:-tests/test_gpu_path.py} 2>&1 | tee "$OUT/tests.log" | tail -30; rc=${PIPESTATUS[0]} ;;
    scale)
      mkdir -p benchmarks/work/scale
      prev=benchmarks/results/scale_sce2tm${TAG:-_cuda}.json  # rows of earlier calls, kept by --update
      [ -f "$prev" ] && cp "$prev" "$OUT/"
      for n in ${SIZES:-10000 100000}; do
        f=benchmarks/work/scale/kang_$n.h5ad
        [ -f "$f" ] || python3 benchmarks/make_scaled.py --n-cells "$n" --out "$f" --source .gpudata/kang2018_pbmc_ctrl_8donors.h5ad > /dev/null
      done
      run "${SCALE_TIMEOUT:-560}" python3 benchmarks/bench_scale.py --device cuda --threads 16 --sizes ${SIZES:-10000 100000} \
        --modes ${MODES:-memory backed} --tag "${TAG:-_cuda}" --out-dir "$OUT" --update 2>&1 | tail -30
      rc=${PIPESTATUS[0]} ;;
    profile)
      run "${PROFILE_TIMEOUT:-120}" python3 benchmarks/gpu_profile_step.py; rc=$? ;;
    *) echo "unknown step $step"; rc=2 ;;
  esac
  echo "== $step took $(( $(date +%s) - t0 )) s (exit $rc; $(left) s left)" | tee -a "$OUT/run_summary.txt"
done
