#!/usr/bin/env bash
# nnU-Net v2 2d baseline on the project's data and patient split, scored with the project's metric.
#
#   dvc repro split                                   # data/raw and data/split.parquet
#   bash bench/nnunet_baseline/run.sh [WORK_DIR]      # from the project's environment (python with tumorseg)
#
# Steps: venv with nnunetv2==2.8.1 (torch pinned to the project's torch version) -> export our split ->
# Dataset501_SynthBraTS (convert.py) -> plan + preprocess 2d -> splits_final.json (fold 0 = our train vs our
# val patients) -> train fold 0 for a wall-clock budget (trainer/) -> predict the test patients with and
# without mirroring TTA -> score.py -> report.py -> bench/results/nnunet.md.
# The venv and the converted/preprocessed data are reused when still valid; training, prediction and
# scoring always run again (old fold_0 and predictions are deleted).
#
# Knobs (environment):
#   WORK_DIR (1st argument) or NNUNET_WORK  work dir, default /tmp/tumorseg-nnunet (~6 GB venv + data + logs)
#   NNUNET_VENV           nnU-Net venv to use/create, default WORK_DIR/venv; point it at an existing venv with
#                         nnunetv2 installed to skip the ~6 GB install (it is not modified: the trainer is found
#                         through nnUNet_extTrainer, not copied into the package)
#   NNUNET_TIME_LIMIT_S   training budget in seconds, default 600
#   NNUNET_BATCH_SIZE     default 8;  NNUNET_TORCH_THREADS  default 2;  nnUNet_n_proc_DA  default 2
#   NNUNET_DEVICE         -device for train/predict, default cpu
#   NNUNET_REPORT         markdown output, default bench/results/nnunet.md (relative to the repo root)
#   TUMORSEG_PYTHON       the project's python, default `python` on PATH at start
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
cd "$REPO"

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "[nnunet_baseline $(date +%H:%M:%S)] $*"; }
# step NAME CMD...: run CMD with its output in WORK/NAME.log; on failure show the log's tail
step() {
  local name=$1; shift
  if ! "$@" > "$WORK/$name.log" 2>&1; then
    tail -n 40 "$WORK/$name.log" >&2
    die "$name failed; full log: $WORK/$name.log"
  fi
}

if [ ! -d data/raw ] || [ ! -f data/split.parquet ]; then
  die "data/raw or data/split.parquet missing in $REPO; run \`dvc repro split\` first"
fi

# The project's python, recorded before anything else is put on PATH.
PROJECT_PY="${TUMORSEG_PYTHON:-$(command -v python || true)}"
[ -n "$PROJECT_PY" ] || die "no python on PATH; activate the project's environment or set TUMORSEG_PYTHON"
"$PROJECT_PY" -c 'import sys; sys.path.insert(0, "src"); import tumorseg.evaluation.metrics, torch, pandas' 2>/dev/null \
  || die "$PROJECT_PY cannot import tumorseg/torch/pandas; run from the project's environment or set TUMORSEG_PYTHON"
TORCH_VERSION="$("$PROJECT_PY" -c 'import torch; print(torch.__version__.split("+")[0])')"

WORK="${1:-${NNUNET_WORK:-/tmp/tumorseg-nnunet}}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
VENV="${NNUNET_VENV:-$WORK/venv}"
REPORT="${NNUNET_REPORT:-bench/results/nnunet.md}"
DEVICE="${NNUNET_DEVICE:-cpu}"
DS=Dataset501_SynthBraTS
TRAINER=nnUNetTrainer_TimeBudget
export NNUNET_TIME_LIMIT_S="${NNUNET_TIME_LIMIT_S:-600}"
export NNUNET_BATCH_SIZE="${NNUNET_BATCH_SIZE:-8}"
export NNUNET_TORCH_THREADS="${NNUNET_TORCH_THREADS:-2}"
export nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-2}"
export nnUNet_def_n_proc="${nnUNet_def_n_proc:-1}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$NNUNET_TORCH_THREADS}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-$NNUNET_TORCH_THREADS}"
export nnUNet_raw="$WORK/nnUNet_raw" nnUNet_preprocessed="$WORK/nnUNet_preprocessed" nnUNet_results="$WORK/nnUNet_results"
export nnUNet_extTrainer="$HERE/trainer"
log "work dir $WORK, venv $VENV, budget ${NNUNET_TIME_LIMIT_S} s, project python $PROJECT_PY (torch $TORCH_VERSION)"

# 1. venv
if "$VENV/bin/python" -c 'import nnunetv2' 2>/dev/null; then
  log "reusing $VENV"
else
  log "creating $VENV and installing nnunetv2==2.8.1 with torch==$TORCH_VERSION (several GB, minutes)"
  "$PROJECT_PY" -m venv "$VENV"
  echo "torch==$TORCH_VERSION" > "$WORK/constraints.txt"
  step install "$VENV/bin/python" -m pip install -c "$WORK/constraints.txt" nnunetv2==2.8.1
fi
NNUNET_PY="$VENV/bin/python"
SOFTWARE="$("$NNUNET_PY" -c 'import importlib.metadata as m; print("nnunetv2", m.version("nnunetv2") + ", torch", m.version("torch"))')"
case "$SOFTWARE" in
  "nnunetv2 2.8.1, torch $TORCH_VERSION"*) ;;
  *) log "WARNING: $VENV has $SOFTWARE; expected nnunetv2 2.8.1, torch $TORCH_VERSION" ;;
esac
PKG="$("$NNUNET_PY" -c 'import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))')"
if grep -rqs --include='*.py' "class $TRAINER(" "$PKG/training/nnUNetTrainer"; then
  die "$PKG has its own $TRAINER, which would shadow $HERE/trainer; remove it from the package"
fi
export PATH="$VENV/bin:$PATH"

# 2. split, conversion, plan + preprocess (skipped while split, raw files and convert.py are unchanged)
step export_split "$PROJECT_PY" "$HERE/splits.py" export --split data/split.parquet --raw data/raw --out "$WORK/cases.json"
STAMP="$({ cat "$WORK/cases.json" "$HERE/convert.py"; find -L data/raw -name '*.nii.gz' -printf '%P %s %T@\n' | sort; } | sha256sum | cut -d' ' -f1)"
if [ -f "$nnUNet_preprocessed/$DS/nnUNetPlans.json" ] && [ "$(cat "$WORK/preprocessed.stamp" 2>/dev/null)" = "$STAMP" ]; then
  log "reusing $nnUNet_preprocessed/$DS"
else
  log "converting and preprocessing (2d)"
  rm -rf "${nnUNet_raw:?}/$DS" "${nnUNet_preprocessed:?}/$DS" "$WORK/preprocessed.stamp"
  step convert "$NNUNET_PY" "$HERE/convert.py" --cases "$WORK/cases.json"
  step preprocess nnUNetv2_plan_and_preprocess -d 501 -c 2d --verify_dataset_integrity -np 2 -npfp 2
  echo "$STAMP" > "$WORK/preprocessed.stamp"
fi
step make_splits "$PROJECT_PY" "$HERE/splits.py" folds --cases "$WORK/cases.json" \
  --out "$nnUNet_preprocessed/$DS/splits_final.json"

# 3. train
FOLD="$nnUNet_results/$DS/${TRAINER}__nnUNetPlans__2d/fold_0"
rm -rf "$FOLD" "$WORK/pred_test" "$WORK/pred_test_notta" "$WORK/results.json"
log "training fold 0 for ${NNUNET_TIME_LIMIT_S} s (log: $WORK/train.log)"
t0=$SECONDS
step train nnUNetv2_train 501 2d 0 -tr "$TRAINER" -device "$DEVICE"
T_TRAIN=$((SECONDS - t0))
grep -h "time limit reached\|all epochs done" "$FOLD"/training_log_*.txt || true

# 4. predict the test patients, with nnU-Net's default mirroring TTA and without
predict() {
  nnUNetv2_predict -i "$nnUNet_raw/$DS/imagesTs" -o "$1" -d 501 -c 2d -tr "$TRAINER" -f 0 \
    -device "$DEVICE" -npp 1 -nps 1 --disable_progress_bar "${@:2}"
}
log "predicting the test patients (TTA, then no TTA)"
t0=$SECONDS; step predict_tta predict "$WORK/pred_test"; T_TTA=$((SECONDS - t0))
t0=$SECONDS; step predict_notta predict "$WORK/pred_test_notta" --disable_tta; T_NOTTA=$((SECONDS - t0))
printf 'train %s s\npredict_tta %s s\npredict_notta %s s\n' "$T_TRAIN" "$T_TTA" "$T_NOTTA" > "$WORK/timings.log"

# 5. score with the project's metric, write the markdown
"$PROJECT_PY" "$HERE/score.py" --pred "$WORK/pred_test" --cases "$WORK/cases.json" --label tta --out "$WORK/results.json"
"$PROJECT_PY" "$HERE/score.py" --pred "$WORK/pred_test_notta" --cases "$WORK/cases.json" --label notta --out "$WORK/results.json"
"$PROJECT_PY" "$HERE/report.py" --results "$WORK/results.json" --fold-dir "$FOLD" \
  --timing "train=$T_TRAIN" --timing "tta=$T_TTA" --timing "notta=$T_NOTTA" --software "$SOFTWARE" \
  --command "NNUNET_TIME_LIMIT_S=$NNUNET_TIME_LIMIT_S bash bench/nnunet_baseline/run.sh" --out "$REPORT"
log "done; wrote $REPORT"
