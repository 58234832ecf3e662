"""Quality at an equal budget of image-steps: (a) the originals only vs (b) stores of 5 augmented copies.

Builds the stores with build-aug from an image folder (the real CIFAR-10 JPEGs), trains the
deep CNN on each with `train` for the same number of image-steps, and reports the validation
curves (against image-steps) and final accuracies. (a) uses a store of the originals alone:
an identity policy (an empty albumentations Compose), one copy, no separate original.
Every run evaluates on the same validation images: same source, --val-fraction and --seed.
Interrupted? Rerun the same command: finished stores and runs are kept, unfinished runs resume.

    python bench/bench_quality.py --images /tmp/cifar --work /tmp/quality --runs a,b-crop-flip              # 2M image-steps each
    python bench/bench_quality.py --images /tmp/cifar --work /tmp/quality --runs b-crop-flip-cosine,a-cosine
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
RUNS = {  # name: (policy, copies, extra train options); the first five ran before cosine became the default
    "a": ("identity", 1, ["--lr-schedule", "constant"]),
    "b-crop-flip": ("crop-flip", 5, ["--lr-schedule", "constant"]),
    "b-notebook": ("notebook", 5, ["--lr-schedule", "constant"]),
    "b-crop-flip-lr1e-4": (
        "crop-flip",
        5,
        ["--lr-schedule", "constant", "--learning-rate", "1e-4"],
    ),  # the classic Keras example's RMSprop rate
    "a-lr1e-4": ("identity", 1, ["--lr-schedule", "constant", "--learning-rate", "1e-4"]),
    "b-crop-flip-cosine": ("crop-flip", 5, ["--lr-schedule", "cosine"]),  # RMSprop 1e-3 decayed to 0 over the run
    "a-cosine": ("identity", 1, ["--lr-schedule", "cosine"]),
    "b-notebook-cosine": ("notebook", 5, ["--lr-schedule", "cosine"]),
}


def build(images: str, work: Path, policy: str, copies: int) -> Path:
    store = work / f"{policy}-{copies}.zarr"
    if policy == "identity":
        import albumentations as A

        policy_file = work / "identity.json"
        A.save(A.Compose([]), str(policy_file))
        policy = str(policy_file)
    subprocess.run(
        [
            str(BIN / "build-aug"),
            "--source",
            images,
            "--out",
            str(store),
            "--copies",
            str(copies),
            "--no-include-original",
            "--policy",
            policy,
            "--preview",
            "4",
            "--preview-dir",
            str(store.with_suffix(".preview")),
            "--quiet",
        ],
        check=True,
    )
    return store


def train(store: Path, run_dir: Path, epochs: int, extra: list[str]) -> list[dict]:
    """The run's history, trained (or its interrupted run resumed) unless it is complete."""
    from augzarr.trainer.records import Progress, RunRecord

    record = RunRecord.read(run_dir)
    if record is None or not record.is_complete:
        args = [str(BIN / "train"), "--store", str(store), "--epochs", str(epochs), "--out", str(run_dir), *extra]
        if record is not None and record.is_running:
            args = [str(BIN / "train"), "--resume", "--out", str(run_dir), "--epochs", str(epochs)]
        with open(run_dir.with_suffix(".log"), "a") as log:
            subprocess.run(args, check=True, stdout=log, stderr=subprocess.STDOUT)
    return Progress.read(run_dir).history


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--runs", default="a,b-crop-flip")
    parser.add_argument("--budget", type=int, default=2_000_000, help="image-steps per run")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    import zarr

    results = {}
    for name in args.runs.split(","):
        policy, copies, extra = RUNS[name]
        store = build(args.images, args.work, policy, copies)
        rows = zarr.open_group(str(store), mode="r")["train/images"].shape[0]
        epochs = -(-args.budget // rows)
        print(f"{name}: {rows:,} rows x {epochs} epochs = {rows * epochs:,} image-steps", flush=True)
        history = train(
            store,
            args.work / f"run-{name}" if args.budget == 2_000_000 else args.work / f"run-{name}-{args.budget}",
            epochs,
            extra,
        )
        results[name] = {"rows": rows, "history": history}
        (args.work / f"results-{args.budget}.json").write_text(json.dumps(results, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    print("| run | policy | rows/epoch | epochs | image-steps | final val acc | best val acc | final val loss |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, result in results.items():
        history, rows = result["history"], result["rows"]
        steps = [row["epoch"] * rows for row in history]
        accuracy = [row["val_accuracy"] for row in history]
        axis.plot(steps, accuracy, marker="." if len(steps) > 20 else "o", label=f"{name} ({RUNS[name][0]})")
        print(
            f"| {name} | {RUNS[name][0]} | {rows:,} | {len(history)} | {steps[-1]:,} | {accuracy[-1]:.4f} | {max(accuracy):.4f} | {history[-1]['val_loss']:.4f} |"
        )
    axis.set_xlabel("image-steps")
    axis.set_ylabel("validation accuracy")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(args.work / f"quality-{args.budget}.png", dpi=100)
    print(f"curves: {args.work / f'quality-{args.budget}.png'}")


if __name__ == "__main__":
    main()
