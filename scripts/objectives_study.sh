#!/usr/bin/env bash
# The tutorial's study for the objectives without negatives: BYOL, SimSiam, VICReg, Barlow Twins
# (scripts/reproduce_tutorial.sh runs it for raw pixels, random, supervised, VAE and SimCLR).
#
#   scripts/objectives_study.sh [--quick] [--only baselines,few_labels,bias] DATA.npz [-- overrides ...]
#
# Into $OUT (default outputs/objectives/<date>_<time>), each followed by reprlab-report:
#   baselines/   experiment=tutorial_<objective>: 60 epochs on the tutorial's protocol, 10-epoch probe
#   few_labels/  each baseline's encoder probed at 5% .. 100% of the labels (8 epochs scaled by
#                1/sqrt(fraction), as reproduce_tutorial.sh does for SimCLR)
#   bias/        experiment=tutorial_bias_<objective> on the biased training set and its control
#
# JOBS=N runs N trainings at once, each with 2/N of the CPU threads (torch's small convolutions
# use two threads poorly; on 2 cores, JOBS=2 finishes the four baselines sooner). --quick: 2
# pretraining and 3 probe epochs everywhere. PYTHON picks the interpreter.
set -uo pipefail

quick=${QUICK:-0}
only=baselines,few_labels,bias
data_file=""
extra=()
while (($#)); do
  case "$1" in
    --quick) quick=1 ;;
    --only)
      shift
      only=$1
      ;;
    -h | --help)
      sed -n '2,16p' "$0"
      exit 0
      ;;
    --)
      shift
      extra=("$@")
      break
      ;;
    *) data_file=$1 ;;
  esac
  shift
done
if [[ -z "$data_file" || ! -f "$data_file" ]]; then
  echo "objectives_study.sh: the tutorial's data file is needed (dsprites_subset.npz), got '${data_file}'" >&2
  exit 2
fi
for study in ${only//,/ }; do
  case "$study" in
    baselines | few_labels | bias) ;;
    *)
      echo "objectives_study.sh: --only takes baselines, few_labels, bias; got '$study'" >&2
      exit 2
      ;;
  esac
done

python=${PYTHON:-python}
out=${OUT:-outputs/objectives/$(date +%Y-%m-%d_%H-%M-%S)}
jobs=${JOBS:-1}
objectives=(byol simsiam vicreg barlow_twins)
data=("data.path=$(cd "$(dirname "$data_file")" && pwd)/$(basename "$data_file")")
fractions=0.05,0.1,0.2,0.4,0.75,1.0
few_probe=(probe.epochs=8)
epochs=()
if [[ "$quick" == 1 ]]; then
  epochs=(method.epochs=2 probe.epochs=3)
  few_probe=()
fi
threads=$(( $(nproc) / jobs ))
((threads < 1)) && threads=1
export OMP_NUM_THREADS=$threads

mkdir -p "$out"
failed=()
wants() { [[ ",$only," == *",$1,"* ]]; }
# run_all NAME COMMAND-PREFIX... -- one command per objective, $jobs at a time; OBJ in the
# arguments is replaced by the objective.
run_all() {
  local name=$1 start=$SECONDS pids=() names=() objective
  shift
  for objective in "${objectives[@]}"; do
    local args=("${@//OBJ/$objective}")
    echo "== ${name}_$objective: ${args[*]}"
    "${args[@]}" > "$out/${name}_$objective.log" 2>&1 &
    pids+=($!)
    names+=("${name}_$objective")
    while (($(jobs -rp | wc -l) >= jobs)); do wait -n; done
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { failed+=("${names[$i]}"); echo "== ${names[$i]} FAILED: $out/${names[$i]}.log"; }
  done
  echo "== $name took $((SECONDS - start)) s"
}

if wants baselines; then
  run_all baselines "$python" -m reprlab.train experiment=tutorial_OBJ "${data[@]}" \
    callbacks.epoch_snapshots.every_n_epochs=10 "${epochs[@]}" "${extra[@]}" \
    "hydra.run.dir=$out/baselines/OBJ"
fi
if wants few_labels; then
  run_all few_labels "$python" -m reprlab.eval "ckpt_path=$out/baselines/OBJ/checkpoints/last.ckpt" \
    "probe.label_fractions=[$fractions]" analysis=none "${few_probe[@]}" "${epochs[@]}" \
    "${extra[@]}" "hydra.run.dir=$out/few_labels/OBJ"
fi
if wants bias; then
  for control in false true; do
    run_all "bias_control_$control" "$python" -m reprlab.train experiment=tutorial_bias_OBJ \
      "bias.control=$control" "${data[@]}" "${epochs[@]}" "${extra[@]}" \
      "hydra.run.dir=$out/bias/OBJ_control_$control"
  done
fi

for study in baselines few_labels bias; do
  compare=(--compare tutorial)
  [[ "$study" == bias ]] && compare=()
  if wants "$study" && [[ -d "$out/$study" ]]; then
    "$python" -m reprlab.report "$out/$study" "${compare[@]}" || failed+=("report_$study")
  fi
done
echo
echo "Reports: $out/{${only}}/report.md; logs: $out/*.log"
if ((${#failed[@]})); then
  echo "Steps with failures: ${failed[*]}"
  exit 1
fi
