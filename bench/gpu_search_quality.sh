#!/usr/bin/env bash
# Issue #16's search-quality bench on a larger machine, as one script: the SmolLM2 genome on
# the GPU (family built there, then bench/search_quality.py --genomes smol) while the CPUs
# run the 48-gene tiny-hard genome on a tiny family built on this machine (another CPU's
# build than the 2-core VM's), its seeds split over processes of one thread each.
#
# Usage, from the repo root, with llm-evo's dependencies importable by $PY:
#   OUT=/tmp/sq PY=python3 STRATS=cma,ctf,ctf-gp,gp SEEDS=20 bash bench/gpu_search_quality.sh
# then: python bench/search_quality.py --combine $OUT/th_*.json --budgets 16,32,48,96
set -u
OUT=${OUT:-/tmp/llm-evo-sq}
PY=${PY:-python3}
STRATS=${STRATS:-cma,ctf,ctf-gp,gp}
SEEDS=${SEEDS:-20}   # tiny-hard seeds per strategy
PER=${PER:-5}        # seeds per process
SMOL_SEEDS=${SMOL_SEEDS:-3}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
t0=$SECONDS
note() { echo "$(( SECONDS - t0 )) s: $*" | tee -a "$OUT/summary.txt"; }

(
  timeout 150 $PY scripts/make_smol_family.py --out models/smol --device cuda \
    >"$OUT/smol_family.log" 2>&1
  note "smol family rc $?"
  timeout "${SMOL_LIMIT:-280}" $PY bench/search_quality.py --genomes smol --strategies \
    "$STRATS" --seeds "$SMOL_SEEDS" --budgets 16,32,48 --threads 2 \
    --json "$OUT/sq_smol.json" >"$OUT/sq_smol.log" 2>&1
  note "smol search quality rc $?"
) &

# The tiny model is faster on one CPU thread than on a shared GPU (launch overheads).
CUDA_VISIBLE_DEVICES= timeout 150 $PY scripts/make_tiny_family.py --out models/tiny >"$OUT/tiny_family.log" 2>&1
note "tiny family rc $?"
for s in ${STRATS//,/ }; do
  for ((f = 0; f < SEEDS; f += PER)); do
    CUDA_VISIBLE_DEVICES= timeout "${TINY_LIMIT:-240}" $PY bench/search_quality.py --genomes tiny-hard \
      --strategies "$s" --seeds "$PER" --first-seed "$f" --budgets "${TINY_BUDGETS:-16,32,48,96}" --threads 1 \
      --json "$OUT/th_${s}_$f.json" >"$OUT/th_${s}_$f.log" 2>&1 &
  done
done
wait
note "all done"
ls "$OUT"/th_*.json >/dev/null 2>&1 && $PY bench/search_quality.py --combine "$OUT"/th_*.json --budgets "${TINY_BUDGETS:-16,32,48,96}" --markdown \
  >>"$OUT/summary.txt" 2>&1
[ -f "$OUT/sq_smol.json" ] && $PY bench/search_quality.py --combine "$OUT/sq_smol.json" \
  --budgets 16,32,48 --markdown >>"$OUT/summary.txt" 2>&1
cat "$OUT/summary.txt"
