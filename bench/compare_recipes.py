"""Compare augmentation recipes at equal image-steps from one source (issue #12 point 4).

Each recipe is a store (build-aug --copies N --policy P) and train options (--online, --mix,
--keras-augment). Every store is built with the same build seed, so every recipe is judged on the same
held-out validation images; each recipe trains for the epochs that come closest to --image-steps images
(at least one epoch), once per training seed. The anchor users would pick instead of stored copies runs
alongside: online augmentation by Keras 3 preprocessing layers (keras-crop-flip, keras-randaugment) at the
same image-steps, with its wall time, since on a CPU those layers slow every step while stored copies cost
nothing at training time (their cost is the build, reported apart).

    python bench/compare_recipes.py --source /tmp/cifar --limit 10000 --image-steps 500000 --seeds 0,1,2 \\
        --work /tmp/compare --json compare.json
    python bench/compare_recipes.py --list      # the recipes and what each runs

It prints a Markdown table: final and best validation accuracy, final validation loss, final training
accuracy (mean and sample standard deviation over the seeds), the image-steps run, training wall time
and the store's build time.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Recipe:
    copies: int
    policy: str = "crop-flip"
    train: tuple[str, ...] = field(default=())

    @property
    def store_name(self) -> str:
        return "originals" if self.copies == 0 else f"{self.policy}-x{self.copies}"


ONLINE = ("--online", "flip,shift,erase")
RECIPES = {
    "originals": Recipe(0),
    "crop-flip-x5": Recipe(5),
    "crop-flip-x5+online": Recipe(5, train=ONLINE),
    "crop-flip-cutout-x5": Recipe(5, "crop-flip-cutout"),
    "randaugment-x5": Recipe(5, "randaugment"),
    "randaugment-x5+online": Recipe(5, "randaugment", ONLINE),
    "crop-flip-x5+cutmix": Recipe(5, train=("--mix", "cutmix")),
    "keras-crop-flip": Recipe(0, train=("--keras-augment", "crop-flip")),
    "keras-randaugment": Recipe(0, train=("--keras-augment", "randaugment")),
}
DEFAULT_RECIPES = ("originals", "crop-flip-x5", "crop-flip-x5+online", "randaugment-x5", "keras-crop-flip", "keras-randaugment")


def run(command: list[str]) -> float:
    """Run one of augzarr's commands; its wall time in seconds. A failure stops the comparison with its error."""
    start = time.perf_counter()
    result = subprocess.run([str(BIN / command[0]), *command[1:]], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"compare_recipes: {' '.join(command)} failed: {result.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - start


def build(recipe: Recipe, args, stores: dict) -> tuple[Path, float]:
    """The recipe's store, built once and shared by the recipes that train on it."""
    out = args.work / f"{recipe.store_name}.zarr"
    if out not in stores:
        command = ["build-aug", "--source", args.source, "--out", str(out), "--copies", str(recipe.copies), "--policy", recipe.policy,
                   "--val-fraction", str(args.val_fraction), "--seed", "0", "--preview", "0", "--quiet"]
        stores[out] = run(command + (["--limit", str(args.limit)] if args.limit else []))
    return out, stores[out]


def train_rows(store: Path) -> int:
    import zarr

    return zarr.open_group(str(store), mode="r")["train/images"].shape[0]


def final_and_best(run_dir: Path) -> dict:
    with open(run_dir / "history.csv") as file:
        history = list(csv.DictReader(file))
    last = history[-1]
    return {"final_val_accuracy": float(last["val_accuracy"]), "best_val_accuracy": max(float(r["val_accuracy"]) for r in history),
            "final_val_loss": float(last["val_loss"]), "final_train_accuracy": float(last["accuracy"])}


def compare(args) -> list[dict]:
    stores: dict[Path, float] = {}
    results = []
    for name in args.recipes:
        recipe = RECIPES[name]
        store, build_seconds = build(recipe, args, stores)
        rows = train_rows(store)
        epochs = max(1, round(args.image_steps / rows))
        for seed in args.seeds:
            run_dir = args.work / "runs" / f"{name}-seed{seed}"
            command = ["train", "--store", str(store), "--epochs", str(epochs), "--seed", str(seed), "--model", args.model,
                       "--batch-size", str(args.batch_size), "--out", str(run_dir), "--quiet", *recipe.train]
            if (run_dir / "run.json").is_file() and json.loads((run_dir / "run.json").read_text()).get("status") == "complete":
                wall = json.loads((run_dir / "compare.json").read_text())["train_seconds"]  # a rerun of the comparison keeps finished runs
            else:
                wall = run(command)
                (run_dir / "compare.json").write_text(json.dumps({"train_seconds": wall}))
            results.append({"recipe": name, "seed": seed, "image_steps": epochs * rows, "epochs": epochs, "train_seconds": wall,
                            "build_seconds": build_seconds, **final_and_best(run_dir)})
            print(f"{name} seed {seed}: {results[-1]['final_val_accuracy']:.4f} val accuracy, {wall:,.0f} s", file=sys.stderr, flush=True)
    return results


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{mean:.4f}"


def table(results: list[dict]) -> str:
    lines = ["| recipe | runs | final val acc | best val acc | final val loss | final train acc | image-steps | train s | build s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in dict.fromkeys(r["recipe"] for r in results):
        runs = [r for r in results if r["recipe"] == name]
        cells = [spread([r[key] for r in runs]) for key in ("final_val_accuracy", "best_val_accuracy", "final_val_loss", "final_train_accuracy")]
        lines.append(f"| {name} | {len(runs)} | {' | '.join(cells)} | {runs[0]['image_steps']:,} | "
                     f"{statistics.fmean(r['train_seconds'] for r in runs):,.0f} | {runs[0]['build_seconds']:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", help="what build-aug --source takes: an image folder, a CIFAR-10 archive, cifar10")
    parser.add_argument("--work", type=Path, help="stores and run folders go here (finished runs are kept and reused)")
    parser.add_argument("--recipes", default=",".join(DEFAULT_RECIPES), help=f"comma-separated, of: {', '.join(RECIPES)}")
    parser.add_argument("--image-steps", type=int, default=500_000, help="images trained on per run (whole epochs, the closest count)")
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated: mean and spread over them")
    parser.add_argument("--limit", type=int, help="build-aug --limit: the first N training images")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--model", default="deep")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--list", action="store_true", help="list the recipes and exit")
    args = parser.parse_args()
    if args.list:
        for name, recipe in RECIPES.items():
            print(f"{name}: build-aug --copies {recipe.copies} --policy {recipe.policy}; train {' '.join(recipe.train) or '(defaults)'}")
        return
    if not args.source or not args.work:
        parser.error("--source and --work are needed (or --list)")
    args.recipes = [name.strip() for name in args.recipes.split(",") if name.strip()]
    unknown = [name for name in args.recipes if name not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe {', '.join(unknown)}; see --list")
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    results = compare(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
