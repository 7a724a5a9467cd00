#!/usr/bin/env bash
# Probe the Neuromatch tutorial's six published encoders with reprlab, under the tutorial's
# protocol and probe epochs (conf/experiment/tutorial_published_*.yaml), with precise BatchNorm
# statistics on and off, and set them beside the tutorial's numbers (reprlab-report --compare).
#
#   scripts/eval_published.sh CHECKPOINTS_DIR DATA_NPZ [-- hydra overrides ...]
#
# CHECKPOINTS_DIR holds the tutorial's .pth files, DATA_NPZ is dsprites_subset.npz. Results go to
# $OUT (default outputs/published/<date>_<time>); PYTHON picks the interpreter (default: python).
# Overrides after `--` go to every run, e.g. `-- analysis=none` for the probes alone.
set -euo pipefail

if (($# < 2)) || [[ "$1" == -h || "$1" == --help ]]; then
  sed -n '2,11p' "$0"
  exit 2
fi
checkpoints=$1
data_file=$2
shift 2
[[ "${1:-}" == "--" ]] && shift
for path in "$checkpoints" "$data_file"; do
  if [[ ! -e "$path" ]]; then
    echo "eval_published.sh: no such file or folder: $path" >&2
    exit 2
  fi
done
python=${PYTHON:-python}
out=${OUT:-outputs/published/$(date +%Y-%m-%d_%H-%M-%S)}

"$python" -m reprlab.eval -m 'experiment=glob(tutorial_published_*)' precise_bn=true,false \
  "tutorial_checkpoints=$(realpath "$checkpoints")" "data.path=$(realpath "$data_file")" \
  "hydra.sweep.dir=$out" "$@"
"$python" -m reprlab.report "$out" --compare tutorial
