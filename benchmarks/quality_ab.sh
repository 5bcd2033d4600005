#!/usr/bin/env bash
# Controlled A/B of SCE2TM recipes (issue 17): every arm x dataset x seed, two single-threaded
# runs side by side (quality numbers do not depend on contention; timings from here do: measure
# time per epoch alone). Each run: benchmarks/bench_foundation.py with the arm's options.
#
# Usage: benchmarks/quality_ab.sh OUT_DIR EPOCHS "ARM ..." "DATASET ..." "SEED ..."
#   e.g. benchmarks/quality_ab.sh benchmarks/results/quality 200 "paper default" "pbmc3k kang8 baron" "0 1 2"
# then:  python benchmarks/summarise_quality_ab.py OUT_DIR
# Arms are named sets of SCE2TM options; add one by adding a line to arm_options.
set -euo pipefail
out=${1:?OUT_DIR}; epochs=${2:?EPOCHS}; arms=${3:?ARMS}; datasets=${4:?DATASETS}; seeds=${5:?SEEDS}
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-$here/../.venv/bin/python}

arm_options() {
  case $1 in
    paper) echo "preset=paper" ;;                      # the published equations and schedule
    default) echo "preset=default" ;;                  # the recommended recipe
    default_no_warmup) echo "preset=default ecr_delay=0 ecr_warmup=0" ;;
    default_wo_cve) echo "preset=default cross_view=false" ;;        # ablation: w/o CVE
    default_wo_ecr) echo "preset=default ecr_weight=0" ;;            # ablation: w/o ECR
    neighbour) echo "preset=default cve_loss=neighbour" ;;          # instance-level InfoNCE CVE
    neighbour_cve_weight_x3) echo "preset=default cve_loss=neighbour cve_weight=330" ;;  # 3x auto on pbmc3k
    neighbour_temperature_0.2) echo "preset=default cve_loss=neighbour temperature=0.2" ;;
    paper_warmup) echo "preset=paper ecr_delay=0.5 ecr_warmup=0.25" ;;  # the paper + the ECR warm-up
    cluster_auto) echo "preset=paper cve_weight=auto ecr_delay=0.5 ecr_warmup=0.25" ;;
    default_log1p) echo "preset=default encoder_input=log1p" ;;     # encoder input log1p(counts scaled to 1e4)
    # arms on top of the depth-augmented default (depth_augment=0.2 since 23cc115)
    depth02) echo "preset=default" ;;
    cellw) echo "preset=default recon_weighting=cell" ;;            # every cell weighs the same in the NLL
    log1p_thin) echo "preset=default encoder_input=log1p" ;;        # log1p input and thinning together
    no_nb) echo "preset=default cve_neighbours=false" ;;            # relational CVE without the unused neighbour rows (issue 20)
    *) echo "unknown arm $1" >&2; return 1 ;;
  esac
}

mkdir -p "$out/logs"
jobs=()
for ds in $datasets; do for seed in $seeds; do for arm in $arms; do jobs+=("$arm $ds $seed"); done; done; done
run_one() {
  read -r arm ds seed <<<"$1"
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
    "$py" "$here/bench_foundation.py" --datasets "$ds" --epochs "$epochs" --seeds "$seed" \
    --set $(arm_options "$arm") --tag "ab${epochs}_${arm}_${ds}_s${seed}" --results-dir "$out" \
    >"$out/logs/${arm}_${ds}_s${seed}.txt" 2>&1
  echo "done $arm $ds $seed $(date +%T)"
}
export -f run_one arm_options; export py here epochs out
printf '%s\n' "${jobs[@]}" | xargs -P 2 -I{} bash -c 'run_one "$@"' _ {}
