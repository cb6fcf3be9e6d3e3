#!/usr/bin/env bash
# The CUDA checks of issue #15 on one GPU machine, as one script: the SmolLM2 family built on
# the GPU, configs/smol.yml's search in bf16 in memory and on disk, the gpu-marked tests, and
# whether vLLM is importable. Each stage has its own time limit and its own log, and a
# failing stage does not stop the next: a GPU lease is short, and one try should say as
# much as it can.
#
# Usage, from the repo root, with llm-evo's dependencies importable by $PY:
#   OUT=/tmp/gpu PY=python3 bash bench/gpu_check.sh
# Figures go to $OUT/summary.txt (and docs/performance.md by hand).
set -u
OUT=${OUT:-/tmp/llm-evo-gpu}
PY=${PY:-python3}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"

stage() {  # stage NAME SECONDS COMMAND...: run with a limit, log, and note rc and wall time
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "stage $name: rc $rc, $((SECONDS - t0)) s" | tee -a "$SUMMARY"
  return $rc
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  nproc
  $PY - <<'EOF'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
for name in ("transformers", "mergekit", "lm_eval", "ray", "optuna", "pydantic", "llm_evo"):
    try:
        mod = importlib.import_module(name)
        print(name, getattr(mod, "__version__", "?"))
    except Exception as exc:  # noqa: BLE001 - report and go on
        print(name, "NOT IMPORTABLE:", exc)
try:
    import vllm
    print("vllm", vllm.__version__)
except Exception as exc:  # noqa: BLE001
    print("vllm NOT IMPORTABLE:", type(exc).__name__, exc)
EOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt" >>"$SUMMARY"

stage build_ext 40 $PY setup.py -q build_ext --inplace  # the optional C kinship kernel

stage family 140 $PY scripts/make_smol_family.py --out models/smol --device cuda
tail -8 "$OUT/family.log" >>"$SUMMARY"

# configs/smol.yml in bf16 with a GPU-sized batch (its comment says: on a GPU, raise it)
sed -e 's/^  dtype: float32/  dtype: bfloat16/' -e 's/^  batch_size: 4/  batch_size: 32/' \
  configs/smol.yml >"$OUT/smol-bf16.yml"
run_search() {  # run_search NAME LIMIT FLAGS...
  local name=$1 limit=$2
  shift 2
  stage "$name" "$limit" $PY -m llm_evo run "$OUT/smol-bf16.yml" --storage-path "$OUT/$name" \
    --no-wandb --quiet --ray-address local "$@"
  $PY bench/gpu_summary.py "$OUT/$name" >>"$SUMMARY" 2>&1
}
run_search search_in_memory 150 --in-memory --timeout 90
stage gpu_tests 80 $PY -m pytest -q -p no:cacheprovider -o addopts="" \
  tests/kinship/test_kinship_metrics.py tests/kinship/test_fast_kernels.py

run_search search_on_disk 150 --max-fevals 12
echo "done" >>"$SUMMARY"
