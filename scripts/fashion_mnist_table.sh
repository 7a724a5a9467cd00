#!/usr/bin/env bash
# The Fashion-MNIST exercise and its baselines (raw pixels, random SimpleCNN, supervised
# SimpleCNN, SimCLR SimpleCNN), one run each into OUT, then one table of their metrics: the
# linear probe, kNN, logistic regression, SVM, k-means NMI / ARI / accuracy and wall time.
#
#   scripts/fashion_mnist_table.sh OUT [extra Hydra overrides for every run...]
#   scripts/fashion_mnist_table.sh outputs/fmnist                       # the full protocol
#   scripts/fashion_mnist_table.sh outputs/fmnist_small data.num_images=10000 analysis.svm=false
set -euo pipefail
out=${1:?usage: fashion_mnist_table.sh OUT [overrides...]}
shift
for preset in raw random supervised exercise; do
    if [[ ! -f "$out/$preset/metrics.json" ]]; then
        start=$(date +%s)
        python -m reprlab.train "experiment=fashion_mnist_$preset" logger=csv callbacks=none \
            "hydra.run.dir=$out/$preset" "$@"
        echo $(( $(date +%s) - start )) > "$out/$preset/wall_seconds"
    fi
done
python - "$out" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
keys = [("test/acc", "probe"), ("analysis/knn_acc", "kNN"), ("analysis/logreg_acc", "logreg"),
        ("analysis/svm_acc", "SVM"), ("analysis/kmeans_nmi", "k-means NMI"),
        ("analysis/kmeans_ari", "ARI"), ("analysis/kmeans_acc", "k-means acc")]
print("| features | " + " | ".join(name for _, name in keys) + " | dim | precision | wall |")
print("|---" * (len(keys) + 4) + "|")
for preset in ("raw", "random", "supervised", "exercise"):
    m = json.loads((out / preset / "metrics.json").read_text())
    cells = ["-" if k not in m else f"{100 * m[k]:.2f}" if k.endswith("acc") else f"{m[k]:.3f}"
             for k, _ in keys]
    wall = (out / preset / "wall_seconds").read_text().strip()
    cfg = (out / preset / "config.yaml").read_text()
    precision = next((l.split(":", 1)[1].strip() for l in cfg.splitlines()
                      if l.strip().startswith("precision:")), "?")
    print(f"| {preset} | " + " | ".join(cells) + f" | {m.get('feature_dim', '?')} | {precision} | {wall} s |")
PY
