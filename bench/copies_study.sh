#!/usr/bin/env bash
# Issue #12's study at a scale this 2-core machine can run in a few hours: 4,000 training images and
# 4,000 held-out validation images from the CIFAR-10 JPEGs, 168,000 image-steps per run (42 epochs of the
# originals, 2 of 20 copies: a whole number of epochs for every N but 10), 3 seeds per point.
# First the policy: crop-flip, crop-flip-cutout and randaugment at 5 copies. Then, with the best of them,
# copies N = 0, 1, 2, 5, 10, 20 with and without train --online, beside both Keras-layer anchors (the one
# matching the best policy first).
# Finished runs are kept in docs/study/copies.json and reused, so the study can be stopped and rerun.
#     bash bench/copies_study.sh /tmp/cifar /tmp/copies-study
set -euo pipefail
cd "$(dirname "$0")/.."
source_dir=${1:?give the CIFAR-10 image folder (../shared/data/cifar10-train-jpg.tar.gz extracted)}
work=${2:-/tmp/copies-study}
python=${PYTHON:-.venv/bin/python}
compare() {
    "$python" bench/compare_recipes.py --source "$source_dir" --work "$work" --limit 8000 --val-fraction 0.5 \
        --image-steps 168000 --seeds 0,1,2 --json docs/study/copies.json "$@"
}
compare --recipes crop-flip-x5,crop-flip-cutout-x5,randaugment-x5 --plot docs/study/policies.png
best=$("$python" - <<'PY'
import json, statistics
runs = json.load(open("docs/study/copies.json"))["runs"]
policies = ("crop-flip", "crop-flip-cutout", "randaugment")
mean = {p: statistics.fmean(r["final_val_accuracy"] for r in runs if r["recipe"] == f"{p}-x5") for p in policies}
print(max(mean, key=mean.get))
PY
)
echo "best policy at 5 copies: $best" >&2
if [ "$best" = randaugment ]; then anchors=(keras-randaugment keras-crop-flip); else anchors=(keras-crop-flip keras-randaugment); fi
recipes="$best-x5,originals,${anchors[0]},$best-x5+online"
for n in 20 10 2 1; do recipes="$recipes,$best-x$n,$best-x$n+online"; done
compare --recipes "$recipes,originals+online,${anchors[1]}" --plot docs/study/copies.png
