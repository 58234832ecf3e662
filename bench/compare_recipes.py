"""Compare augmentation recipes at equal image-steps from one source (issue #12 point 4).

Each recipe is a store (build-aug --copies N --policy P) and train options (--online, --mix,
--keras-augment). Every store is built with the same build seed, so every recipe is judged on the same
held-out validation images; each recipe trains for the epochs that come closest to --image-steps images
(at least one epoch), once per training seed. The anchor users would pick instead of stored copies runs
alongside: online augmentation by Keras 3 preprocessing layers (keras-crop-flip, keras-randaugment) at the
same image-steps, with its wall time and training rate: those layers run inside every step, while stored
copies cost nothing at training time (their cost is the build, reported apart).

    python bench/compare_recipes.py --source /tmp/cifar --limit 10000 --image-steps 500000 --seeds 0,1,2 \\
        --work /tmp/compare --json compare.json
    python bench/compare_recipes.py --list      # the recipes and what each runs

It prints a Markdown table: final and best validation accuracy, final validation loss, final training
accuracy (mean and sample standard deviation over the seeds), the image-steps run, training wall time,
the training rate (the median epoch's images/s over training steps only) and the store's build time.
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

from augzarr.trainer.report import median_training_rate

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Recipe:
    copies: int
    policy: str = "crop-flip"
    train: tuple[str, ...] = field(default=())

    @property
    def store_name(self) -> str:
        return "originals" if self.copies == 0 else f"{self.policy}-x{self.copies}"


# A recipe's name says what it runs: originals or POLICY-xN (build-aug --policy POLICY --copies N), then any
# of +online, +flip-shift, +mixup, +cutmix (train options); or keras-AUGMENT (originals, train --keras-augment AUGMENT).
# +flip-shift is the online half of crop-flip: fresh per-epoch randomness without the cutout that +online adds.
MODIFIERS = {"online": ("--online", "flip,shift,erase"), "flip-shift": ("--online", "flip,shift"), "mixup": ("--mix", "mixup"),
             "cutmix": ("--mix", "cutmix")}
EXAMPLES = ("originals", "crop-flip-x5", "crop-flip-x5+online", "crop-flip-x5+flip-shift", "crop-flip-cutout-x5", "randaugment-x5", "randaugment-x5+online",
            "crop-flip-x5+cutmix", "keras-crop-flip", "keras-randaugment")
DEFAULT_RECIPES = ("originals", "crop-flip-x5", "crop-flip-x5+online", "randaugment-x5", "keras-crop-flip", "keras-randaugment")


def parse_recipe(name: str) -> Recipe:
    """The recipe a name describes; ValueError saying what is wrong with it."""
    from augzarr.builder.policies import PRESETS
    from augzarr.trainer.options import KERAS_AUGMENTS

    base, *modifiers = name.split("+")
    unknown = [m for m in modifiers if m not in MODIFIERS]
    if unknown:
        raise ValueError(f"{name}: unknown modifier +{unknown[0]} (use {', '.join('+' + m for m in MODIFIERS)})")
    train = tuple(part for m in modifiers for part in MODIFIERS[m])
    if base.startswith("keras-"):
        if base[len("keras-"):] not in KERAS_AUGMENTS or modifiers:
            raise ValueError(f"{name}: the Keras-layer anchors are {', '.join('keras-' + a for a in KERAS_AUGMENTS)}, without modifiers")
        return Recipe(0, train=("--keras-augment", base[len("keras-"):]))
    if base == "originals":
        return Recipe(0, train=train)
    policy, _, copies = base.rpartition("-x")
    if policy not in PRESETS or not copies.isdigit():
        raise ValueError(f"{name}: not originals, keras-AUGMENT or POLICY-xN with POLICY one of {', '.join(PRESETS)}")
    return Recipe(int(copies), policy, train)


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
            "final_val_loss": float(last["val_loss"]), "final_train_accuracy": float(last["accuracy"]),
            # training steps only (no validation, no start-up): what online augmentation slows and stored copies do not
            "train_images_per_second": median_training_rate(history)}


def config_of(args) -> dict:
    """What makes two runs of a recipe and seed comparable: a results file is reused only under the same."""
    return {key: str(getattr(args, key)) for key in ("source", "limit", "image_steps", "val_fraction", "model", "batch_size")}


def load_results(args) -> dict:
    """Finished runs from an earlier --json written under the same configuration, by (recipe, seed)."""
    if not args.json or not args.json.is_file():
        return {}
    saved = json.loads(args.json.read_text())
    if saved.get("config") != config_of(args):
        print(f"compare_recipes: {args.json} was written under other settings; its runs are not reused", file=sys.stderr)
        return {}
    return {(r["recipe"], r["seed"]): r for r in saved["runs"]}


def compare(args) -> list[dict]:
    stores: dict[Path, float] = {}
    saved = load_results(args)
    results = []
    for name in args.recipes:
        recipe = parse_recipe(name)
        for seed in args.seeds:
            if (name, seed) in saved:
                results.append(saved[(name, seed)])
                continue
            store, build_seconds = build(recipe, args, stores)
            rows = train_rows(store)
            epochs = max(1, round(args.image_steps / rows))
            run_dir = args.work / "runs" / f"{name}-seed{seed}"
            command = ["train", "--store", str(store), "--epochs", str(epochs), "--seed", str(seed), "--model", args.model,
                       "--batch-size", str(args.batch_size), "--out", str(run_dir), "--quiet", *recipe.train]
            if (run_dir / "run.json").is_file() and json.loads((run_dir / "run.json").read_text()).get("status") == "complete":
                wall = json.loads((run_dir / "compare.json").read_text())["train_seconds"]  # a rerun of the comparison keeps finished runs
            else:
                wall = run(command)
                (run_dir / "compare.json").write_text(json.dumps({"train_seconds": wall}))
            results.append({"recipe": name, "copies": recipe.copies, "seed": seed, "image_steps": epochs * rows, "epochs": epochs,
                            "train_seconds": wall, "build_seconds": build_seconds, **final_and_best(run_dir)})
            print(f"{name} seed {seed}: {results[-1]['final_val_accuracy']:.4f} val accuracy, {wall:,.0f} s", file=sys.stderr, flush=True)
            if args.json:  # after every run, so a long study stopped midway keeps what it finished
                args.json.write_text(json.dumps({"config": config_of(args), "runs": results + [r for k, r in saved.items() if r not in results]}, indent=1))
    return results


def plot(results: list[dict], path: Path) -> None:
    """Final validation accuracy against copies N: one line per policy and train options (the originals are
    every line's N = 0), mean and standard deviation over the seeds; Keras-layer anchors as bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def stats(runs):
        values = [r["final_val_accuracy"] for r in runs]
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    by_recipe: dict[str, list[dict]] = {}
    for r in results:
        by_recipe.setdefault(r["recipe"], []).append(r)
    lines: dict[tuple[str, str], dict[int, list[dict]]] = {}
    for name, runs in by_recipe.items():
        base, _, extras = name.partition("+")
        if base != "originals" and not base.startswith("keras-"):
            lines.setdefault((base.rpartition("-x")[0], extras), {})[parse_recipe(name).copies] = runs
    for name, runs in by_recipe.items():  # the originals join every line with the same train options
        base, _, extras = name.partition("+")
        if base == "originals":
            for (policy, line_extras), points in lines.items():
                if line_extras == extras:
                    points[0] = runs
    all_copies = sorted({n for points in lines.values() for n in points})
    position = {n: i for i, n in enumerate(all_copies)}  # evenly spaced: 0, 1, 2, 5, 10, 20 read better than on a linear axis
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for (policy, extras), points in sorted(lines.items()):
        copies = sorted(points)
        means, sds = zip(*(stats(points[n]) for n in copies))
        x = [position[n] for n in copies]
        axes.errorbar(x, means, yerr=sds, marker="o", capsize=3, label=policy + (f" + {extras.replace('+', ' + ')}" if extras else ""))
    for shade, (name, runs) in zip(("0.25", "0.55"), ((n, r) for n, r in by_recipe.items() if n.startswith("keras-"))):
        mean, sd = stats(runs)
        axes.axhline(mean, linestyle="--", color=shade, label=f"{name} (online Keras layers, originals)")
        axes.axhspan(mean - sd, mean + sd, color=shade, alpha=0.15)
    axes.set_xticks(range(len(all_copies)), [str(n) for n in all_copies])
    axes.set_xlabel("stored copies per image (--copies N)")
    axes.set_ylabel("final validation accuracy")
    steps = statistics.mode(r["image_steps"] for r in results)  # whole epochs: a few N land a little off it
    axes.set_title(f"{len(results) // max(1, len(by_recipe))} seeds per point, about {steps:,} image-steps per run", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{mean:.4f}"


def rate(runs: list[dict]) -> str:
    """The median over runs of each run's median epoch training rate; '-' for results saved before it was kept."""
    rates = [r["train_images_per_second"] for r in runs if r.get("train_images_per_second")]
    return f"{statistics.median(rates):,.0f}" if rates else "-"


def table(results: list[dict]) -> str:
    lines = ["| recipe | runs | final val acc | best val acc | final val loss | final train acc | image-steps | train s | train images/s | build s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in dict.fromkeys(r["recipe"] for r in results):
        runs = [r for r in results if r["recipe"] == name]
        cells = [spread([r[key] for r in runs]) for key in ("final_val_accuracy", "best_val_accuracy", "final_val_loss", "final_train_accuracy")]
        lines.append(f"| {name} | {len(runs)} | {' | '.join(cells)} | {runs[0]['image_steps']:,} | "
                     f"{statistics.fmean(r['train_seconds'] for r in runs):,.0f} | {rate(runs)} | {runs[0]['build_seconds']:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", help="what build-aug --source takes: an image folder, a CIFAR-10 archive, cifar10")
    parser.add_argument("--work", type=Path, help="stores and run folders go here (finished runs are kept and reused)")
    parser.add_argument("--recipes", default=",".join(DEFAULT_RECIPES), help="comma-separated recipe names; see --list")
    parser.add_argument("--image-steps", type=int, default=500_000, help="images trained on per run (whole epochs, the closest count)")
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated: mean and spread over them")
    parser.add_argument("--limit", type=int, help="build-aug --limit: the first N training images")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--model", default="deep")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json", type=Path, help="write every run's figures here after each run; finished runs in it are reused")
    parser.add_argument("--plot", type=Path, help="also draw final validation accuracy against --copies N into this PNG")
    parser.add_argument("--list", action="store_true", help="say how recipes are named, with examples, and exit")
    args = parser.parse_args()
    if args.list:
        print("originals | POLICY-xN | keras-AUGMENT, then any of " + ", ".join(f"+{m} (train {' '.join(o)})" for m, o in MODIFIERS.items()))
        for name in EXAMPLES:
            recipe = parse_recipe(name)
            print(f"{name}: build-aug --copies {recipe.copies} --policy {recipe.policy}; train {' '.join(recipe.train) or '(defaults)'}")
        return
    if not args.source or not args.work:
        parser.error("--source and --work are needed (or --list)")
    args.recipes = [name.strip() for name in args.recipes.split(",") if name.strip()]
    for name in args.recipes:
        try:
            parse_recipe(name)
        except ValueError as exc:
            parser.error(f"recipe {exc}")
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    results = compare(args)
    print(table(results))
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
