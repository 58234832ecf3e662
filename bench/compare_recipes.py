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

A rerun reuses what --work and --json hold only where everything that shaped it is the same: a store is
reused when build-aug finds it built from the same images with the same arguments; a run when its train
options (epochs from --image-steps, --model, --batch-size, seed, the recipe's options), its store's contents,
its --model file and the Keras backend are. Anything else is refused in one line naming what differs: a
finished run is never replaced. Each recipe has one name (crop-flip-x0 is originals; modifiers in any order),
and a recipe or seed given twice is refused rather than counted twice.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from augzarr.errors import OptionError
from augzarr.storage.local import write_atomic
from augzarr.trainer.options import TrainOptions
from augzarr.trainer.records import RunRecord, StoreFingerprint
from augzarr.trainer.report import median_training_rate

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Recipe:
    copies: int
    policy: str = "crop-flip"
    train: tuple[str, ...] = field(default=())  # train's flags, in MODIFIERS' order

    @property
    def store_name(self) -> str:
        return "originals" if self.copies == 0 else f"{self.policy}-x{self.copies}"

    @property
    def name(self) -> str:
        """The recipe's one name, under which its runs are filed, saved and shown: every spelling of it gives this one."""
        options = self.train_options
        if "keras_augment" in options:
            return f"keras-{options['keras_augment']}"
        pairs = set(zip(self.train[::2], self.train[1::2]))
        return self.store_name + "".join(f"+{m}" for m, option in MODIFIERS.items() if option in pairs)

    @property
    def train_options(self) -> dict:
        """The train options as TrainOptions fields: ("--online", "flip,shift") -> {"online": "flip,shift"}."""
        return {flag[2:].replace("-", "_"): value for flag, value in zip(self.train[::2], self.train[1::2])}


# A recipe's name says what it runs: originals or POLICY-xN (build-aug --policy POLICY --copies N), then any
# of +online, +flip-shift, +mixup, +cutmix (train options); or keras-AUGMENT (originals, train --keras-augment AUGMENT).
# +flip-shift is the online half of crop-flip: fresh per-epoch randomness without the cutout that +online adds.
MODIFIERS = {
    "online": ("--online", "flip,shift,erase"),
    "flip-shift": ("--online", "flip,shift"),
    "mixup": ("--mix", "mixup"),
    "cutmix": ("--mix", "cutmix"),
}
EXAMPLES = (
    "originals",
    "crop-flip-x5",
    "crop-flip-x5+online",
    "crop-flip-x5+flip-shift",
    "crop-flip-cutout-x5",
    "randaugment-x5",
    "randaugment-x5+online",
    "crop-flip-x5+cutmix",
    "keras-crop-flip",
    "keras-randaugment",
)
DEFAULT_RECIPES = (
    "originals",
    "crop-flip-x5",
    "crop-flip-x5+online",
    "randaugment-x5",
    "keras-crop-flip",
    "keras-randaugment",
)


def parse_recipe(name: str) -> Recipe:
    """The recipe a name describes; ValueError saying what is wrong with it. Modifiers may come in any order; each
    train option is set once (train keeps the last of a repeated option, so +mixup+cutmix would run cutmix alone)."""
    from augzarr.builder.policies import PRESETS
    from augzarr.trainer.options import KERAS_AUGMENTS

    base, *modifiers = name.split("+")
    unknown = [m for m in modifiers if m not in MODIFIERS]
    if unknown:
        raise ValueError(f"{name}: unknown modifier +{unknown[0]} (use {', '.join('+' + m for m in MODIFIERS)})")
    setting: dict[str, str] = {}  # train flag -> the modifier that sets it
    for m in modifiers:
        flag = MODIFIERS[m][0]
        if flag in setting:
            raise ValueError(
                f"{name}: +{m} is given twice: give it once"
                if setting[flag] == m
                else f"{name}: +{setting[flag]} and +{m} both set train {flag}: keep one"
            )
        setting[flag] = m
    train = tuple(part for m in MODIFIERS if m in modifiers for part in MODIFIERS[m])
    if base.startswith("keras-"):
        if base[len("keras-") :] not in KERAS_AUGMENTS or modifiers:
            raise ValueError(
                f"{name}: the Keras-layer anchors are {', '.join('keras-' + a for a in KERAS_AUGMENTS)}, without modifiers"
            )
        return Recipe(0, train=("--keras-augment", base[len("keras-") :]))
    if base == "originals":
        return Recipe(0, train=train)
    policy, _, copies = base.rpartition("-x")
    if policy not in PRESETS or not (copies.isascii() and copies.isdigit()):
        raise ValueError(f"{name}: not originals, keras-AUGMENT or POLICY-xN with POLICY one of {', '.join(PRESETS)}")
    # no copies: the policy is never applied, so POLICY-x0 is the originals (and shares their store)
    return Recipe(int(copies), policy, train) if int(copies) else Recipe(0, train=train)


def parse_recipes(text: str) -> list[Recipe]:
    """--recipes: each recipe once, whatever it is called (a recipe given twice trained once and counted twice)."""
    given: dict[str, str] = {}  # the recipe's name -> the name it was given as
    recipes = []
    for name in (part.strip() for part in text.split(",") if part.strip()):
        try:
            recipe = parse_recipe(name)
        except ValueError as exc:
            raise ValueError(f"--recipes {exc}") from None
        if recipe.name in given:
            first = given[recipe.name]
            raise ValueError(
                f"--recipes: {name} is given twice: give it once"
                if first == name
                else f"--recipes: {first} and {name} are the same recipe ({recipe.name}): give it once"
            )
        given[recipe.name] = name
        recipes.append(recipe)
    if not recipes:
        raise ValueError("--recipes: give at least one recipe (--list names them)")
    return recipes


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {text}: give whole numbers separated by commas") from None
    twice = next((seed for i, seed in enumerate(seeds) if seed in seeds[:i]), None)
    if twice is not None:
        raise ValueError(f"--seeds {text}: seed {twice} is given twice: give it once")
    return seeds


def launch(command: list[str]) -> subprocess.CompletedProcess:
    """One of augzarr's console scripts in a process of its own (the tests put in one that forks them from a process
    that has imported TensorFlow already)."""
    return subprocess.run([str(BIN / command[0]), *command[1:]], capture_output=True, text=True)


def run(command: list[str]) -> tuple[float, str | None]:
    """Run one of augzarr's commands: its wall time in seconds, and the last line of its error when it failed."""
    start = time.perf_counter()
    result = launch(command)
    lines = result.stderr.strip().splitlines()
    error = (lines[-1] if lines else f"exit status {result.returncode}") if result.returncode else None
    return time.perf_counter() - start, error


def failed(command: list[str], error: str):
    sys.exit(f"compare_recipes: {' '.join(command)} failed: {error}")


def read_json(path: Path) -> dict:
    """A JSON object from a file; {} when it is missing or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


@dataclass
class BuiltStore:
    path: Path
    seconds: float  # its build time, as the store records it
    fingerprint: dict
    train_rows: int


def build(recipe: Recipe, args, stores: dict) -> BuiltStore:
    """The recipe's store, built once and shared by the recipes that train on it. One that --work holds already is
    reused only when build-aug finds it made from the same images with the same arguments; else refused, never replaced."""
    from augzarr.store_format import open_store

    out = args.work / f"{recipe.store_name}.zarr"
    if out in stores:
        return stores[out]
    existed = read_json(out / "zarr.json").get("attributes", {}).get("complete")
    command = [
        "build-aug",
        "--source",
        args.source,
        "--out",
        str(out),
        "--copies",
        str(recipe.copies),
        "--policy",
        recipe.policy,
        "--val-fraction",
        str(args.val_fraction),
        "--seed",
        "0",
        "--preview",
        "0",
        "--quiet",
    ]
    command += ["--limit", str(args.limit)] if args.limit else []
    wall, error = run(command)
    if error:
        # build-aug's error names what differs, then its advice (--overwrite), which is not this command's
        refused = f"build-aug: error: {out} "
        if existed and error.startswith(refused) and ": " in error[len(refused) :]:
            sys.exit(
                f"compare_recipes: --work holds {out}, which {error[len(refused) :].rpartition(': ')[0]}: "
                f"give another --work, or remove {out} to build it again"
            )
        failed(command, error)
    opened = open_store(str(out), check_chunks=False)
    attrs, rows = opened.attrs, opened.rows("train")
    if not rows:
        sys.exit(
            f"compare_recipes: {out} has no training images: give more images (or a larger --limit, a smaller --val-fraction)"
        )
    stores[out] = BuiltStore(out, (attrs.built or {}).get("seconds", wall), StoreFingerprint.of(attrs).to_json(), rows)
    return stores[out]


def keras_backend() -> str:
    """The backend train will run on, found as Keras finds it (KERAS_BACKEND, else keras.json in KERAS_HOME or
    ~/.keras, else tensorflow) without importing Keras, which takes seconds."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = (
        os.environ["KERAS_HOME"]
        if "KERAS_HOME" in os.environ
        else os.path.join(os.path.expanduser("~") if os.access(os.path.expanduser("~"), os.W_OK) else "/tmp", ".keras")
    )
    backend = read_json(Path(home).expanduser() / "keras.json").get("backend")
    return backend if isinstance(backend, str) and backend else "tensorflow"


def model_file_sha256(spec: str) -> str | None:
    """The sha256 of a --model file (PATH.py:FUNCTION, PATH.keras), as run.json records it; None for a built-in."""
    from augzarr.trainer.model_spec import parse_model_spec
    from augzarr.trainer.own_model import file_sha256

    parsed = parse_model_spec(spec)
    return file_sha256(parsed.path) if parsed is not None and parsed.path.is_file() else None


def run_settings(run: RunRecord) -> dict:
    """What shaped a train run, from its run.json: every train option (as it ran: RunRecord reads the options of any
    augzarr), its store by content, the --model file, the backend."""
    return {
        "options": asdict(run.options) if run.options is not None else {},
        "store": run.store_fingerprint.to_json() if run.store_fingerprint else None,
        "model_sha256": run.model.sha256 if run.model else None,
        "backend": run.backend,
    }


def shown(value) -> str:
    return "(none)" if value in ("", None) else str(value)


def differences(recorded: dict, wanted: dict, args, same_store_path: bool) -> list[str]:
    """What differs between the settings a run was made under and this comparison's, by name. A finished run is judged
    by its store's contents, not its path (--work may have moved); an unfinished one is continued by train only with
    the very same options."""
    found = []
    for key, value in wanted["options"].items():
        old = recorded["options"].get(key)
        if old != value and (key != "store" or same_store_path):
            origin = f" (from --image-steps {args.image_steps})" if key == "epochs" else ""
            found.append(f"--{key.replace('_', '-')} {shown(old)} -> {shown(value)}{origin}")
    old_store, store = recorded["store"] or {}, wanted["store"]
    if old_store.get("content_hash") != store["content_hash"]:
        found.append("the source images (their content hash)")
    elif old_store.get("identity") != store["identity"]:
        from augzarr.builder.records import describe_difference

        found.append(f"the store's build ({describe_difference(old_store.get('identity') or {}, store['identity'])})")
    elif old_store.get("chunk_crc32") != store["chunk_crc32"]:
        found.append("the store's images (their CRC-32s)")
    if recorded["model_sha256"] not in (None, wanted["model_sha256"]):
        found.append(f"the contents of the --model file {args.model} (its sha256)")
    if recorded["backend"] not in (None, wanted["backend"]):
        found.append(f"the Keras backend {recorded['backend']} -> {wanted['backend']}")
    return found


def final_and_best(run_dir: Path) -> dict:
    with open(run_dir / "history.csv") as file:
        history = list(csv.DictReader(file))
    last = history[-1]
    return {
        "final_val_accuracy": float(last["val_accuracy"]),
        "best_val_accuracy": max(float(r["val_accuracy"]) for r in history),
        "final_val_loss": float(last["val_loss"]),
        "final_train_accuracy": float(last["accuracy"]),
        # training steps only (no validation, no start-up): what online augmentation slows and stored copies do not
        "train_images_per_second": median_training_rate(history),
    }


def config_of(args) -> dict:
    """The settings a results file is written under; each of its runs records in full what made it ("settings")."""
    return {
        key: str(getattr(args, key))
        for key in ("source", "limit", "image_steps", "val_fraction", "model", "batch_size")
    }


def load_results(args) -> dict:
    """Finished runs of an earlier --json, by (recipe, seed). A file written under other settings is refused, not
    overwritten: it keeps its runs."""
    if not args.json or not args.json.exists():
        return {}
    saved = read_json(args.json)
    if not isinstance(saved.get("runs"), list) or not all(
        isinstance(r, dict) and {"recipe", "seed"} <= set(r) for r in saved["runs"]
    ):
        sys.exit(f"compare_recipes: --json {args.json} is not a results file of compare_recipes: give another --json")
    config = saved.get("config") or {}
    found = [
        f"--{key.replace('_', '-')} {config.get(key, '(not recorded)')} -> {value}"
        for key, value in config_of(args).items()
        if config.get(key) != value
    ]
    if found:
        sys.exit(
            f"compare_recipes: {args.json} holds runs made under other settings ({'; '.join(found)}): give another --json"
        )
    return {(r["recipe"], r["seed"]): r for r in saved["runs"]}


@dataclass
class PlannedRun:
    recipe: Recipe
    seed: int
    store: BuiltStore
    run_dir: Path
    command: list[str]
    saved: dict | None = None  # the finished run --json holds for it
    finished: bool = False  # --work holds it, finished


def plan(recipe: Recipe, seed: int, store: BuiltStore, saved: dict, args) -> PlannedRun:
    """Where this recipe and seed's result comes from: the run folder in --work, the --json file, or a run of train
    (which continues an interrupted run of the same command). Whatever either holds for it must have been made under
    this comparison's settings, or the comparison stops before training anything, naming what differs."""
    given = {
        "store": str(store.path),
        "epochs": max(1, round(args.image_steps / store.train_rows)),
        "seed": seed,
        "model": args.model,
        "batch_size": args.batch_size,
        **recipe.train_options,
    }
    command = ["train", *(part for key, value in given.items() for part in (f"--{key.replace('_', '-')}", str(value)))]
    wanted = {
        "options": asdict(TrainOptions(**given).normalised()),
        "store": store.fingerprint,
        "model_sha256": args.model_sha256,
        "backend": args.backend,
    }
    run_dir = args.work / "runs" / f"{recipe.name}-seed{seed}"
    planned = PlannedRun(recipe, seed, store, run_dir, [*command, "--out", str(run_dir), "--quiet"])
    run = RunRecord.read(run_dir)
    if run is not None:
        planned.finished = run.is_complete
        found = differences(run_settings(run), wanted, args, same_store_path=not planned.finished)
        if found:
            sys.exit(
                f"compare_recipes: {run_dir} holds a run made under other settings ({'; '.join(found)}): "
                "give another --work, or remove that folder to train it again"
            )
        return planned
    entry = saved.get((recipe.name, seed))
    if entry is not None:
        if not isinstance(entry.get("settings"), dict):
            sys.exit(
                f"compare_recipes: {args.json} does not record the settings of its run of {recipe.name} seed {seed} (written before "
                "compare_recipes recorded them): rerun with the --work that made it, or give another --json"
            )
        found = differences(entry["settings"], wanted, args, same_store_path=False)
        if found:
            sys.exit(
                f"compare_recipes: {args.json} holds a run of {recipe.name} seed {seed} made under other settings "
                f"({'; '.join(found)}): give another --json"
            )
        planned.saved = entry
    return planned


def result_of(planned: PlannedRun) -> dict:
    """A finished run's row of figures, with what made it (its run.json's settings) for a later reuse to check."""
    run = RunRecord.read(planned.run_dir)
    epochs = run.options.epochs
    wall = read_json(planned.run_dir / "compare.json").get("train_seconds")  # None: stopped before it was written
    return {
        "recipe": planned.recipe.name,
        "copies": planned.recipe.copies,
        "seed": planned.seed,
        "image_steps": epochs * planned.store.train_rows,
        "epochs": epochs,
        "train_seconds": wall,
        "build_seconds": planned.store.seconds,
        **final_and_best(planned.run_dir),
        "settings": run_settings(run),
    }


def compare(args) -> list[dict]:
    saved = load_results(args)
    stores: dict[Path, BuiltStore] = {}
    # every check before any training: a refusal never comes after hours of it
    plans = [
        plan(recipe, seed, build(recipe, args, stores), saved, args) for recipe in args.recipes for seed in args.seeds
    ]
    results: dict[tuple[str, int], dict] = {}
    for planned in plans:
        key = (planned.recipe.name, planned.seed)
        if planned.saved is not None:
            results[key] = planned.saved
            continue
        if not planned.finished:
            wall, error = run(planned.command)
            if error:
                failed(planned.command, error)
            write_atomic(planned.run_dir / "compare.json", json.dumps({"train_seconds": wall}))
        results[key] = result_of(planned)
        wall = results[key]["train_seconds"]
        print(
            f"{key[0]} seed {key[1]}: {results[key]['final_val_accuracy']:.4f} val accuracy, "
            f"{'?' if wall is None else f'{wall:,.0f}'} s",
            file=sys.stderr,
            flush=True,
        )
        if args.json:  # after every run, so a long study stopped midway keeps what it finished
            runs = [*results.values(), *(r for k, r in saved.items() if k not in results)]
            write_atomic(args.json, json.dumps({"config": config_of(args), "runs": runs}, indent=1))
    return list(results.values())


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
            for (_policy, line_extras), points in lines.items():
                if line_extras == extras:
                    points[0] = runs
    all_copies = sorted({n for points in lines.values() for n in points})
    position = {
        n: i for i, n in enumerate(all_copies)
    }  # evenly spaced: 0, 1, 2, 5, 10, 20 read better than on a linear axis
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for (policy, extras), points in sorted(lines.items()):
        copies = sorted(points)
        means, sds = zip(*(stats(points[n]) for n in copies))
        x = [position[n] for n in copies]
        axes.errorbar(
            x,
            means,
            yerr=sds,
            marker="o",
            capsize=3,
            label=policy + (f" + {extras.replace('+', ' + ')}" if extras else ""),
        )
    for shade, (name, runs) in zip(("0.25", "0.55"), ((n, r) for n, r in by_recipe.items() if n.startswith("keras-"))):
        mean, sd = stats(runs)
        axes.axhline(mean, linestyle="--", color=shade, label=f"{name} (online Keras layers, originals)")
        axes.axhspan(mean - sd, mean + sd, color=shade, alpha=0.15)
    axes.set_xticks(range(len(all_copies)), [str(n) for n in all_copies])
    axes.set_xlabel("stored copies per image (--copies N)")
    axes.set_ylabel("final validation accuracy")
    steps = statistics.mode(r["image_steps"] for r in results)  # whole epochs: a few N land a little off it
    axes.set_title(
        f"{len(results) // max(1, len(by_recipe))} seeds per point, about {steps:,} image-steps per run", fontsize=10
    )
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


def mean_seconds(runs: list[dict]) -> str:
    """The mean training wall time; '-' when a run's is unknown (it stopped before compare.json was written)."""
    seconds = [r["train_seconds"] for r in runs]
    return "-" if None in seconds else f"{statistics.fmean(seconds):,.0f}"


def table(results: list[dict]) -> str:
    lines = [
        "| recipe | runs | final val acc | best val acc | final val loss | final train acc | image-steps | train s | train images/s | build s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in dict.fromkeys(r["recipe"] for r in results):
        runs = [r for r in results if r["recipe"] == name]
        cells = [
            spread([r[key] for r in runs])
            for key in ("final_val_accuracy", "best_val_accuracy", "final_val_loss", "final_train_accuracy")
        ]
        lines.append(
            f"| {name} | {len(runs)} | {' | '.join(cells)} | {runs[0]['image_steps']:,} | "
            f"{mean_seconds(runs)} | {rate(runs)} | {runs[0]['build_seconds']:,.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", help="what build-aug --source takes: an image folder, a CIFAR-10 archive, cifar10")
    parser.add_argument("--work", type=Path, help="stores and run folders go here (finished runs are kept and reused)")
    parser.add_argument("--recipes", default=",".join(DEFAULT_RECIPES), help="comma-separated recipe names; see --list")
    parser.add_argument(
        "--image-steps", type=int, default=500_000, help="images trained on per run (whole epochs, the closest count)"
    )
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated: mean and spread over them")
    parser.add_argument("--limit", type=int, help="build-aug --limit: the first N training images")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--model", default="deep")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--json", type=Path, help="write every run's figures here after each run; finished runs in it are reused"
    )
    parser.add_argument(
        "--plot", type=Path, help="also draw final validation accuracy against --copies N into this PNG"
    )
    parser.add_argument("--list", action="store_true", help="say how recipes are named, with examples, and exit")
    args = parser.parse_args(argv)
    if args.list:
        print(
            "originals | POLICY-xN | keras-AUGMENT, then any of "
            + ", ".join(f"+{m} (train {' '.join(o)})" for m, o in MODIFIERS.items())
        )
        for name in EXAMPLES:
            recipe = parse_recipe(name)
            print(
                f"{name}: build-aug --copies {recipe.copies} --policy {recipe.policy}; train {' '.join(recipe.train) or '(defaults)'}"
            )
        return
    if not args.source or not args.work:
        parser.error("--source and --work are needed (or --list)")
    try:  # every option checked before anything is built or trained
        args.recipes, args.seeds = parse_recipes(args.recipes), parse_seeds(args.seeds)
        if args.image_steps < 1:
            raise ValueError("--image-steps must be at least 1")
        for recipe in args.recipes:
            for seed in args.seeds:
                TrainOptions(model=args.model, batch_size=args.batch_size, seed=seed, **recipe.train_options).validate()
    except (ValueError, OptionError) as exc:
        sys.exit(f"compare_recipes: {exc}")
    args.model_sha256, args.backend = model_file_sha256(args.model), keras_backend()
    args.work.mkdir(parents=True, exist_ok=True)
    results = compare(args)
    print(table(results))
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
