#!/usr/bin/env bash
# GPU runs on a lent device machine (the workplace's `device` tool), not part of CI.
#
# The machine is bare apart from CUDA torch: the package's other dependencies travel as wheels
# in .whl/ and the real data files in .gpudata/ (both git-ignored, named in the tool's `carry`):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .whl anndata==...
#   mkdir -p .gpudata && cp ../shared/data/{kang2018_pbmc_ctrl_8donors,pbmc3k_seurat_labels,pbmc68k_reduced_counts}.h5ad .gpudata/
# Usage there: bash benchmarks/gpu_run.sh STEP... with steps
#   tests     the test suite with CUDA as the default device (8 xdist workers)
#   smoke     CLI fits on CUDA: float32, bf16 + torch.compile, SCETM, backed, torchrun with nccl
#   profile   torch.profiler on one SCE2TM step (gpu_profile_step.py)
#   scale     bench_scale.py --device cuda at $SIZES (default "10000 100000") and $MODES
# Everything it writes goes under $OUT (the tool brings it back).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$ROOT/src
export SCTOPIC_SHARED_DATA=$ROOT/.gpudata
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, anndata, scanpy; print('torch', torch.__version__, torch.cuda.get_device_name(), 'anndata', anndata.__version__)"

for step in "$@"; do
  t0=$(date +%s)
  case $step in
    tests)
      timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -v -n 8 -p no:cacheprovider --timeout 200 --tb=line \
        tests 2>&1 | tee "$OUT/tests.log" | tail -25 ;;
    smoke)
      S=$OUT/smoke; mkdir -p "$S"
      K=.gpudata/kang2018_pbmc_ctrl_8donors.h5ad
      P=.gpudata/pbmc68k_reduced_counts.h5ad
      E=${SMOKE_EPOCHS:-10}
      python3 -m sctopic fit $K --out /tmp/s_fp32 --overwrite --max-epochs $E --device cuda 2>&1 | tail -3
      python3 -m sctopic fit $K --out /tmp/s_bf16 --overwrite --max-epochs $E --device cuda --precision bf16 2>&1 | tail -3
      python3 -m sctopic fit $K --out /tmp/s_bf16_compile --overwrite --max-epochs $E --device cuda --precision bf16 --compile 2>&1 | tail -3
      python3 -m sctopic fit $K --out /tmp/s_backed --overwrite --max-epochs 3 --device cuda --backed 2>&1 | tail -3
      torchrun --nproc-per-node 1 -m sctopic fit $P --out /tmp/s_nccl --overwrite --max-epochs 3 --backend nccl 2>&1 | tail -3
      for d in s_fp32 s_bf16 s_bf16_compile s_backed s_nccl; do cp /tmp/$d/train.json "$S/$d.json" 2>/dev/null || echo "no train.json for $d"; done
      python3 benchmarks/gpu_smoke_summary.py "$S" ;;
    scale)
      mkdir -p benchmarks/work/scale
      prev=benchmarks/results/scale_sce2tm${TAG:-_cuda}.json  # rows of earlier calls, kept by --update
      [ -f "$prev" ] && cp "$prev" "$OUT/"
      for n in ${SIZES:-10000 100000}; do
        f=benchmarks/work/scale/kang_$n.h5ad
        [ -f "$f" ] || python3 benchmarks/make_scaled.py --n-cells "$n" --out "$f" --source .gpudata/kang2018_pbmc_ctrl_8donors.h5ad > /dev/null
      done
      python3 benchmarks/bench_scale.py --device cuda --threads 16 --sizes ${SIZES:-10000 100000} \
        --modes ${MODES:-memory backed} --tag "${TAG:-_cuda}" --out-dir "$OUT" --update 2>&1 | tail -30 ;;
    profile)
      python3 benchmarks/gpu_profile_step.py ;;
    *) echo "unknown step $step" ;;
  esac
  echo "== $step took $(( $(date +%s) - t0 )) s"
done
