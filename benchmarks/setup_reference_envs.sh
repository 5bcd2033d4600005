#!/usr/bin/env bash
# Create the two environments that run the authors' packages for bench_vs_reference.py:
#
#   benchmarks/envs/sce2tm   sce2tm==1.2.3  (import name scE2TM)
#   benchmarks/envs/scetm    scetm==0.5.0   (import name scETM)
#
# Both packages pin old stacks (sce2tm: numpy 1.24, scanpy 1.9, torch 1.9, python-igraph
# 0.9.8, louvain, jupyter, ...), which do not install on Python 3.11 / torch 2.13.  So each
# environment gets torch==2.13.0 FIRST (the CPU wheel on local disk; any other torch request
# would download a multi-GB CUDA build), then the package with --no-deps, then only the
# dependencies its code really imports on the training path, with current versions.  A
# constraints file keeps torch at 2.13.0 throughout.  What still breaks on this stack is
# shimmed at import time by the runner scripts in benchmarks/reference/ (site-packages is
# never edited); see the docstrings of run_sce2tm.py / run_scetm.py.
#
# Usage: bash benchmarks/setup_reference_envs.sh [--force] [sce2tm] [scetm]
#   --force   recreate an environment that already exists
#   UNPINNED=1 bash ...   install the dependency names without the version pins below
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ENVS="$HERE/envs"
PY="${PYTHON:-python3}"
FORCE=0
WHICH=()
for a in "$@"; do
  case "$a" in
    --force) FORCE=1 ;;
    sce2tm|scetm) WHICH+=("$a") ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done
[ ${#WHICH[@]} -eq 0 ] && WHICH=(sce2tm scetm)

# Versions verified together (2026-11, Python 3.11, torch 2.13.0+cpu).
SCE2TM_DEPS=(
  numpy==2.4.6 scipy==1.17.1 pandas==2.3.3 scikit-learn==1.9.1 scanpy==1.11.5
  anndata==0.12.19 matplotlib==3.11.2 umap-learn==0.5.12 pynndescent==0.7.0 numba==0.68.1
  faiss-cpu==1.15.1 gseapy==1.3.1 pyyaml==6.0.3 tqdm==4.70.1 psutil==7.2.2
  jgraph==0.2.1 ipython==9.18.1
)
# faiss, gseapy, scanpy: imported by scE2TM.runners.Runner at module level.
# umap-learn (+pynndescent, numba): kNN graphs in SingleCellDataHandler.
# jgraph (needs IPython): imported by scE2TM.models.utils (only its unused CellTypeDAG uses it).
# Not installed: louvain / python-igraph 0.9.8 (only the label-based evaluation uses them,
# which the runner replaces), jupyter, einops, safetensors, seaborn (not imported).
SCETM_DEPS=(
  numpy==2.4.6 scipy==1.17.1 pandas==2.3.3 scikit-learn==1.9.1 scanpy==1.11.5
  anndata==0.12.19 h5py==3.16.0 matplotlib==3.11.2 tqdm==4.70.1 psutil==7.2.2
  igraph==1.0.0 leidenalg==0.12.0 tensorboard==2.21.0
)
# tensorboard: scETM imports torch.utils.tensorboard.SummaryWriter at module level.
# Not installed: louvain (only for clustering_method="louvain" in its evaluation).

# pip warns once per local index folder it does not use; keep the log readable
qpip() {
  "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  return "${PIPESTATUS[0]}"
}

strip_pins() { for d in "$@"; do echo "${d%%==*}"; done; }

make_env() {
  local name="$1" pkg="$2"; shift 2
  local deps=("$@")
  local env="$ENVS/$name"
  if [ -x "$env/bin/python" ] && [ "$FORCE" = 0 ]; then
    if "$env/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null \
       && "$env/bin/python" -c "import $( [ "$name" = sce2tm ] && echo scE2TM || echo scETM )" >/dev/null 2>&1; then
      echo "[$name] exists and imports; use --force to rebuild"
      return 0
    fi
    echo "[$name] exists but is incomplete: rebuilding"
  fi
  rm -rf "$env"
  mkdir -p "$ENVS"
  "$PY" -m venv "$env"
  local pip=("$env/bin/python" -m pip --disable-pip-version-check -q)
  local cons="$env/torch-constraint.txt"
  echo "torch==2.13.0" > "$cons"
  echo "[$name] torch==2.13.0 (CPU wheel from local disk)"
  qpip "${pip[@]}" install torch==2.13.0
  if [ "${UNPINNED:-0}" = 1 ]; then mapfile -t deps < <(strip_pins "${deps[@]}"); fi
  echo "[$name] runtime dependencies: ${deps[*]}"
  PIP_CONSTRAINT="$cons" qpip "${pip[@]}" install "${deps[@]}"
  echo "[$name] $pkg (--no-deps: its own pins are for Python 3.8 / torch 1.9)"
  PIP_CONSTRAINT="$cons" qpip "${pip[@]}" install --no-deps "$pkg"
  "$env/bin/python" - <<EOF
import torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
import importlib
importlib.import_module("$( [ "$name" = sce2tm ] && echo scE2TM || echo scETM )")
print("[$name] ok: torch", torch.__version__)
EOF
}

for w in "${WHICH[@]}"; do
  case "$w" in
    sce2tm) make_env sce2tm sce2tm==1.2.3 "${SCE2TM_DEPS[@]}" ;;
    scetm)  make_env scetm scetm==0.5.0 "${SCETM_DEPS[@]}" ;;
  esac
done
echo "environments under $ENVS"
