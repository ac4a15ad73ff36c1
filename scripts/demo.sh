#!/usr/bin/env bash
# Main job: set up, generate the default synthetic cohort (240 patients, 3 sites), prepare it,
# then train and test the two-stage models and the conventional baselines on one split, and
# write the evaluation report (runs/demo/report/report.html); then the same for the MRP fusion
# models of Gao et al. before treatment and after it (runs/demo_mrp/report/report.html).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
DATA=${DATA:-data}
PY=.venv/bin/python
if [ ! -f "$DATA/raw/clinical.csv" ]; then
  $PY -m preprocessing synth --out "$DATA/raw" --patients "${PATIENTS:-240}" --sites "${SITES:-3}" --seed "${SEED:-0}"
fi
$PY -m preprocessing prepare --raw "$DATA/raw" --out "$DATA/prepared" > /dev/null
echo "prepared cohort: $DATA/prepared (datalist.json, exclusions.csv, images/)"
$PY -m preprocessing summary "$DATA/prepared" --truth "$DATA/raw/truth.csv"
$PY -m evaluation holdout --data "$DATA/prepared" --truth "$DATA/raw/truth.csv" --out "${RUNS:-runs}/demo"
$PY -m evaluation holdout --data "$DATA/prepared" --truth "$DATA/raw/truth.csv" --out "${RUNS:-runs}/demo_mrp" \
  --method mrp,mrp_imr,mrp_pre,mrp_imr_pre,mrp_img,mrp_rhpc,mrp_lr_rhpc
