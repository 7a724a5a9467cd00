#!/usr/bin/env bash
# The tutorial's study for the objectives without negatives: BYOL, SimSiam, VICReg, Barlow Twins
# (scripts/reproduce_tutorial.sh runs it for raw pixels, random, supervised, VAE and SimCLR).
#
#   scripts/objectives_study.sh [--quick] [--only baselines,few_labels,bias]
#       [--objectives byol,simsiam,vicreg,barlow_twins,simclr,supervised,random] DATA.npz [-- overrides ...]
#
# Into $OUT (default outputs/objectives/<date>_<time>), each followed by reprlab-report:
#   baselines/   experiment=tutorial_<objective>: 60 epochs on the tutorial's protocol, 10-epoch probe
#   few_labels/  each baseline's encoder probed at 5% .. 100% of the labels (8 epochs scaled by
#                1/sqrt(fraction), as reproduce_tutorial.sh does for SimCLR); the supervised
#                network retrained on each fraction, the random encoder probed at each
#   bias/        experiment=tutorial_bias_<objective> on the biased training set and its control
# and then `reprlab-report $OUT --compare tutorial`: one table, a row per model, with the
# full-label, few-label and bias columns side by side (runs on other pretraining batches, as
# the VICReg and BYOL bias presets pin, get rows of their own).
#
# --objectives picks the models (default: the four without negatives); simclr, supervised and
# random add the references, so that one $OUT holds the whole comparison.
#
# JOBS=N runs N trainings at once, each with 1/N of the CPU threads (torch's small convolutions
# use two threads poorly; on 2 cores, JOBS=2 finishes the four baselines sooner). --quick: 2
# pretraining and 3 probe epochs everywhere. PYTHON picks the interpreter; OMP_NUM_THREADS, if
# set, the threads of each training.
set -uo pipefail

quick=${QUICK:-0}
only=baselines,few_labels,bias
objective_list=byol,simsiam,vicreg,barlow_twins
data_file=""
extra=()
while (($#)); do
  case "$1" in
    --quick) quick=1 ;;
    --only)
      shift
      only=$1
      ;;
    --objectives)
      shift
      objective_list=$1
      ;;
    -h | --help)
      sed -n '2,24p' "$0"
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

for objective in ${objective_list//,/ }; do
  case "$objective" in
    byol | simsiam | vicreg | barlow_twins | simclr | supervised | random) ;;
    *)
      echo "objectives_study.sh: --objectives takes byol, simsiam, vicreg, barlow_twins, simclr, supervised, random; got '$objective'" >&2
      exit 2
      ;;
  esac
done

python=${PYTHON:-python}
out=${OUT:-outputs/objectives/$(date +%Y-%m-%d_%H-%M-%S)}
jobs=${JOBS:-1}
read -r -a objectives <<< "$(tr ',' '\n' <<< "$objective_list" | awk 'NF && !seen[$0]++' | tr '\n' ' ')"
if ((${#objectives[@]} == 0)); then
  echo "objectives_study.sh: --objectives needs at least one objective" >&2
  exit 2
fi
data=("data.path=$(cd "$(dirname "$data_file")" && pwd)/$(basename "$data_file")")
fractions=0.05,0.1,0.2,0.4,0.75,1.0
few_probe=(probe.epochs=8)
# The supervised network is retrained end to end on each fraction, as reproduce_tutorial.sh does.
few_supervised=(method.epochs=20 probe.epochs=8 method.lr=1e-3)
epochs=()
if [[ "$quick" == 1 ]]; then
  epochs=(method.epochs=2 probe.epochs=3)
  few_probe=()
  few_supervised=(method.lr=1e-3)
fi
threads=$(( $(nproc) / jobs ))
((threads < 1)) && threads=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads}

mkdir -p "$out"
failed=()
wants() { [[ ",$only," == *",$1,"* ]]; }
# Each study's command for one objective, into the array cmd.
baselines_cmd() {
  cmd=("$python" -m reprlab.train "experiment=tutorial_$1" "${data[@]}"
    callbacks.epoch_snapshots.every_n_epochs=10 "${epochs[@]}" "${extra[@]}"
    "hydra.run.dir=$out/baselines/$1")
}
few_labels_cmd() {
  case "$1" in
    supervised)
      cmd=("$python" -m reprlab.train -m experiment=tutorial_supervised
        "data.label_fraction=$fractions" "${data[@]}" "${few_supervised[@]}")
      ;;
    random)
      cmd=("$python" -m reprlab.train experiment=tutorial_random
        "probe.label_fractions=[$fractions]" "${data[@]}" "${few_probe[@]}")
      ;;
    *)
      cmd=("$python" -m reprlab.eval "ckpt_path=$out/baselines/$1/checkpoints/last.ckpt"
        "probe.label_fractions=[$fractions]" analysis=none "${few_probe[@]}")
      ;;
  esac
  cmd+=("${epochs[@]}" "${extra[@]}" "hydra.run.dir=$out/few_labels/$1"
    "hydra.sweep.dir=$out/few_labels/$1")
}
bias_cmd() { # the global $control picks the biased set (false) or its control (true)
  cmd=("$python" -m reprlab.train "experiment=tutorial_bias_$1" "bias.control=$control"
    "${data[@]}" "${epochs[@]}" "${extra[@]}" "hydra.run.dir=$out/bias/$1_control_$control")
}
# run_all NAME BUILDER: BUILDER's command for every objective, $jobs at a time.
run_all() {
  local name=$1 builder=$2 start=$SECONDS pids=() names=() objective cmd
  for objective in "${objectives[@]}"; do
    "$builder" "$objective"
    echo "== ${name}_$objective: ${cmd[*]}"
    "${cmd[@]}" > "$out/${name}_$objective.log" 2>&1 &
    pids+=($!)
    names+=("${name}_$objective")
    while (($(jobs -rp | wc -l) >= jobs)); do wait -n; done
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { failed+=("${names[$i]}"); echo "== ${names[$i]} FAILED: $out/${names[$i]}.log"; }
  done
  echo "== $name took $((SECONDS - start)) s"
}

wants baselines && run_all baselines baselines_cmd
wants few_labels && run_all few_labels few_labels_cmd
if wants bias; then
  for control in false true; do
    run_all "bias_control_$control" bias_cmd
  done
fi

for study in baselines few_labels bias; do
  compare=(--compare tutorial)
  [[ "$study" == bias ]] && compare=()
  if wants "$study" && [[ -d "$out/$study" ]]; then
    "$python" -m reprlab.report "$out/$study" "${compare[@]}" || failed+=("report_$study")
  fi
done
"$python" -m reprlab.report "$out" --compare tutorial > /dev/null || failed+=("report")
echo
echo "Reports: $out/report.md (the comparison), $out/{${only}}/report.md; logs: $out/*.log"
if ((${#failed[@]})); then
  echo "Steps with failures: ${failed[*]}"
  exit 1
fi
