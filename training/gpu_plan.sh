#!/usr/bin/env bash
# The model card's GPU plan as one script that picks up where it stopped: two more emonet-wide
# teachers (seeds 2 and 3) trained side by side, each with its batch norm re-measured, then
# emonet-slim-kd, taught by them and by the committed teacher (training/checkpoints/
# emonet-wide-fp16.keras) and started from the shipped weights. Its last five epochs are
# averaged. Every run is training.torch_train (plain PyTorch, bfloat16 autocast on the GPU).
#
#   bash training/gpu_plan.sh prepare   # here: pack the data into .gpu/ and fetch Keras into .whl/
#   bash training/gpu_plan.sh advance   # there: the device call's whole command, carrying .gpu and .whl
#
# Each `advance` goes on as far as BUDGET seconds (default 540) allow and stops only between
# epochs, so every checkpoint is whole. It copies everything finished so far into $OUT:
#  - the new teachers' float16 copies, to commit;
#  - the averaged student, to export and evaluate here;
#  - every run's history.csv.
# Repeat the call until it prints "plan: done". The runs live in the device's ignored runs/,
# which survives only while the machine stays warm between calls.
#
# Settings (environment): BUDGET, TEACHER_EPOCHS (50), STUDENT_EPOCHS (40), LIMIT (0: all
# faces; a few hundred for a rehearsal), DATA (.gpu/fer2013.npz), RUNS (runs/gpu-plan),
# CACHE ($RUNS/cache), OUT ($RUNS/out), PYTHON (python3; .venv/bin/python for prepare),
# KERAS_BACKEND (torch), DEVICE (auto: CUDA when there is one).
set -euo pipefail
cd "$(dirname "$0")/.."

BUDGET=${BUDGET:-540}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-50}
STUDENT_EPOCHS=${STUDENT_EPOCHS:-40}
LIMIT=${LIMIT:-0}
DATA=${DATA:-.gpu/fer2013.npz}
RUNS=${RUNS:-runs/gpu-plan}
OUT=${OUT:-$RUNS/out}
PYTHON_SET=${PYTHON:-}
PYTHON=${PYTHON:-python3}
CACHE=${CACHE:-$RUNS/cache}
TEACHERS=(emonet-wide-2 emonet-wide-3) # trained here, with seeds 2 and 3
COMMITTED_TEACHER=training/checkpoints/emonet-wide-fp16.keras
DEVICE=${DEVICE:-auto}
STUDENT_INIT=training/checkpoints/emonet-slim.weights.h5
WHEELS=(keras==3.15.1 namex==0.1.0 optree==0.20.0) # what the device lacks (KINDS.md's package list)
start=$SECONDS

say() { echo "plan: $*"; }
die() {
  echo "plan: $*" >&2
  exit 2
}
left() { echo $((BUDGET - (SECONDS - start))); }
epochs_done() { # epochs recorded in a run folder's history.csv (its header line excluded)
  if [ -f "$1/history.csv" ]; then echo $(($(wc -l <"$1/history.csv") - 1)); else echo 0; fi
}

prepare() {
  local PYTHON=${PYTHON_SET:-.venv/bin/python}
  [ -f "$DATA" ] || "$PYTHON" -m training.pack "${FER2013:-../shared/fer2013}" "$DATA"
  mkdir -p .whl
  for wheel in "${WHEELS[@]}"; do
    if ! compgen -G ".whl/${wheel%%==*}-${wheel##*==}-*.whl" >/dev/null; then
      "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$wheel"
    fi
  done
  local tracked carried
  tracked=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
  carried=$(du -cb "$DATA" .whl | tail -1 | cut -f1)
  say "the device call carries $(((tracked + carried) / 1048576)) MiB of its 64 MiB: run it as"
  say "  run(carry=[\"$(dirname "$DATA")\", \".whl\"], command=\"bash training/gpu_plan.sh advance\")"
  [ $((tracked + carried)) -lt $((64 * 1048576)) ] || die "that is over the device's 64 MiB"
}

# Train one run folder until it has `epochs` epochs or the budget runs out, in the background
# (its output goes to its log, and the job's pid is left in $!).
train_in_background() {
  local out=$1 epochs=$2
  shift 2
  "$PYTHON" -m training.torch_train --data "$DATA" --cache "$CACHE" --limit "$LIMIT" --out "$out" \
    --epochs "$epochs" --device "$DEVICE" --time-limit $(($(left) - 60)) "$@" >>"$out.log" 2>&1 &
}

# Wait for background training jobs; each failure is named with its log's last lines.
wait_for() {
  local failed=0 pid out
  for pid in "$@"; do
    out=${jobs_out[$pid]}
    if ! wait "$pid"; then
      echo "plan: training $out failed; the end of $out.log:" >&2
      tail -20 "$out.log" >&2
      failed=1
    fi
    say "$out: $(epochs_done "$out") epochs"
  done
  [ $failed -eq 0 ] || exit 1
}

collect() { # everything finished so far, into $OUT (at most 8 files come back)
  mkdir -p "$OUT"
  local name
  for name in "${TEACHERS[@]}" student; do
    [ -f "$RUNS/$name/history.csv" ] && cp "$RUNS/$name/history.csv" "$OUT/$name-history.csv"
  done
  for name in "${TEACHERS[@]}"; do
    [ -f "$RUNS/$name/recal-fp16.keras" ] && cp "$RUNS/$name/recal-fp16.keras" "$OUT/$name-fp16.keras"
  done
  [ -f "$RUNS/student/averaged.keras" ] && cp "$RUNS/student/averaged.keras" "$OUT/student-averaged.keras"
  say "in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
}

advance() {
  export KERAS_BACKEND=${KERAS_BACKEND:-torch} PYTHONUNBUFFERED=1
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
  if ! "$PYTHON" -c "import keras" 2>/dev/null; then
    compgen -G ".whl/*.whl" >/dev/null || die "no keras here and no .whl/ to install it from: run prepare and carry .whl"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  fi
  [ -f "$DATA" ] || die "no $DATA: run prepare where FER-2013 is and carry $(dirname "$DATA")"
  [ -f "$COMMITTED_TEACHER" ] || die "no $COMMITTED_TEACHER: the committed teacher is missing from this checkout"
  mkdir -p "$RUNS"
  "$PYTHON" -c "import sys; from training.data import cached_splits; cached_splits(sys.argv[1], sys.argv[2])" \
    "$DATA" "$CACHE"
  trap collect EXIT

  declare -gA jobs_out=()
  local pids=() name seed
  for name in "${TEACHERS[@]}"; do
    [ "$(epochs_done "$RUNS/$name")" -lt "$TEACHER_EPOCHS" ] || continue
    [ "$(left)" -gt 120 ] || { say "too little time left for $name; call again"; return 0; }
    seed=${name##*-}
    train_in_background "$RUNS/$name" "$TEACHER_EPOCHS" --recipe emonet-wide --seed $seed
    pids+=($!)
    jobs_out[$!]=$RUNS/$name
  done
  [ ${#pids[@]} -eq 0 ] || wait_for "${pids[@]}"
  for name in "${TEACHERS[@]}"; do
    [ "$(epochs_done "$RUNS/$name")" -ge "$TEACHER_EPOCHS" ] || { say "teachers unfinished; call again"; return 0; }
  done

  for name in "${TEACHERS[@]}"; do # batch norm re-measured on plain Training faces, then halved
    [ -f "$RUNS/$name/recal.keras" ] ||
      "$PYTHON" -m training.average "$RUNS/$name/best.keras" --data "$DATA" --cache "$CACHE" \
        --out "$RUNS/$name/recal.keras"
    [ -f "$RUNS/$name/recal-fp16.keras" ] ||
      "$PYTHON" -m training.half "$RUNS/$name/recal.keras" "$RUNS/$name/recal-fp16.keras"
  done

  local student=$RUNS/student first=$((STUDENT_EPOCHS > 4 ? STUDENT_EPOCHS - 4 : 1))
  if [ "$(epochs_done "$student")" -lt "$STUDENT_EPOCHS" ]; then
    [ "$(left)" -gt 120 ] || { say "too little time left for the student; call again"; return 0; }
    mkdir -p "$student"
    train_in_background "$student" "$STUDENT_EPOCHS" --recipe emonet-slim-kd --init "$STUDENT_INIT" \
      --teacher "$COMMITTED_TEACHER" --teacher "$RUNS/${TEACHERS[0]}/recal.keras" \
      --teacher "$RUNS/${TEACHERS[1]}/recal.keras" \
      --snapshots-from "$first"
    jobs_out[$!]=$student
    wait_for $!
    [ "$(epochs_done "$student")" -ge "$STUDENT_EPOCHS" ] || { say "student unfinished; call again"; return 0; }
  fi
  [ -f "$student/averaged.keras" ] ||
    "$PYTHON" -m training.average "$student"/epochs/epoch-*.keras --data "$DATA" --cache "$CACHE" \
      --out "$student/averaged.keras"
  say "done"
}

case ${1:-} in
  prepare) prepare ;;
  advance) advance ;;
  *) die "usage: bash training/gpu_plan.sh prepare|advance" ;;
esac
