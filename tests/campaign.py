"""The robustness campaign: the bad-image corpus, the misuse cases (misuse.py: layouts, policies, build
inputs, corrupted arrays, concurrent writers), then build-aug and train killed with SIGKILL at seeded
random moments, resumed and checked.

Each trial starts a fresh build (or training run), kills its whole process group after a
random delay drawn from [0, the uninterrupted run's duration) (a draw that lands after the
work was already complete is drawn again), then runs the same command again (train:
`train --resume`) and checks the result:
  build-aug: the store is byte-identical to the uninterrupted build's;
  train:     the run is complete, with every epoch in its history and every output written.

    python tests/campaign.py                       # the full campaign: corpus, misuse cases, 20 build kills, 5 train kills
    python tests/campaign.py --build-kills 3 --train-kills 1 --no-corpus --no-misuse --json figures.json

The tests run its fast form (tests/test_campaigns.py); RELIABILITY.md holds the full figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import misuse  # noqa: E402
from conftest import BIN, assert_same_store, write_image_folder  # noqa: E402
from corpus import CASES, make_case  # noqa: E402

BUILD_ARGS = ["--copies", "5", "--chunk-size", "8", "--preview", "2", "--workers", "2", "--quiet"]
TRAIN_EPOCHS = 6
TRAIN_ARGS = ["--epochs", str(TRAIN_EPOCHS), "--batch-size", "8", "--model", "shallow", "--quiet"]


def run(args: list[str]) -> subprocess.CompletedProcess:
    """A console script; as root, without the power to read unreadable files (see corpus' no-read-permission)."""
    prefix = (
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
        if os.geteuid() == 0 and shutil.which("setpriv")
        else []
    )
    return subprocess.run([*prefix, str(BIN / args[0]), *args[1:]], capture_output=True, text=True)


def corpus_campaign(work: Path) -> list[dict]:
    """Each odd file of the corpus beside 8 good images: how build-aug ends, without and with --skip-bad."""
    trials = []
    for case, kind in CASES.items():
        folder = write_image_folder(work / f"corpus-{case}", {"a": 4, "b": 4}, size=16)
        make_case(folder / "a", case)
        args = [
            "build-aug",
            "--source",
            str(folder),
            "--copies",
            "1",
            "--image-size",
            "16",
            "--val-fraction",
            "0",
            "--preview",
            "0",
            "--quiet",
        ]
        plain = run([*args, "--out", str(work / f"corpus-{case}.zarr")])
        skipping = run([*args, "--skip-bad", "--out", str(work / f"corpus-{case}-skip.zarr")])
        trials.append(
            {
                "case": case,
                "expected": kind,
                "exit": plain.returncode,
                "stderr_lines": len(plain.stderr.strip().splitlines()),
                "message": plain.stderr.strip().replace(str(folder), "DIR"),
                "traceback": "Traceback" in plain.stderr + skipping.stderr,
                "skip_bad_exit": skipping.returncode,
                "skip_bad_reported": "skipped:" in skipping.stderr,
            }
        )
    return trials


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    result = run(args)
    if result.returncode:
        raise RuntimeError(f"{args} failed: {result.stderr}")
    return time.perf_counter() - start


def kill_after(args: list[str], delay: float) -> str:
    """Start a command in its own process group and SIGKILL the group after delay seconds."""
    process = subprocess.Popen(
        [str(BIN / args[0]), *args[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        process.wait(timeout=delay)
        return "finished before the kill"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return "killed"


def build_phase(out: Path) -> str:
    if not out.exists() or not any(out.iterdir()):
        return "nothing written"
    if (out / "zarr.json").exists() and not (out / ".build").exists():
        return "complete"
    chunks = out / ".build" / "chunks"
    if not (out / ".build" / "skeleton").exists():
        return "claimed, source not yet staged"
    return f"{len([c for c in chunks.rglob('*') if c.is_file() and not c.name.startswith('.')])} chunks committed"


def build_campaign(work: Path, kills: int, rng: random.Random) -> list[dict]:
    folder = write_image_folder(work / "images", {"a": 300, "b": 300, "c": 300}, size=16)
    args = ["build-aug", "--source", str(folder), *BUILD_ARGS]
    reference = work / "reference.zarr"
    duration = timed([*args, "--out", str(reference), "--preview-dir", str(work / "preview-ref")])
    trials, attempts = [], 0
    while len(trials) < kills and attempts < 4 * kills:  # a kill that lands after the build finished does not count
        attempts += 1
        trial = len(trials)
        out = work / f"build-{trial}.zarr"
        delay = rng.uniform(0, duration)
        outcome = kill_after([*args, "--out", str(out), "--preview-dir", str(work / f"preview-{trial}")], delay)
        phase = build_phase(out)
        if phase == "complete":
            shutil.rmtree(out, ignore_errors=True)
            continue
        resumed = run([*args, "--out", str(out), "--preview-dir", str(work / f"preview-{trial}")])
        identical = False
        if resumed.returncode == 0:
            try:
                assert_same_store(out, reference)
                identical = True
            except AssertionError:
                pass
        trials.append(
            {
                "trial": trial,
                "attempt": attempts,
                "delay_s": round(delay, 2),
                "outcome": outcome,
                "state_at_kill": phase,
                "resume_exit": resumed.returncode,
                "resume_error": resumed.stderr.strip()[-300:],
                "byte_identical": identical,
            }
        )
        shutil.rmtree(out, ignore_errors=True)
    return trials


def run_is_complete(run_dir: Path) -> tuple[bool, str]:
    try:
        run_json = json.loads((run_dir / "run.json").read_text())
        history = (run_dir / "history.csv").read_text().splitlines()[1:]
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError) as exc:
        return False, str(exc)
    epochs = [int(row.split(",")[0]) for row in history]
    missing = [
        name
        for name in (
            "model.keras",
            "model.json",
            "model.weights.h5",
            "curves.png",
            "confusion.png",
            "reliability.png",
            "mistakes.png",
            "model_card.md",
        )
        if not (run_dir / name).is_file() or not (run_dir / name).stat().st_size
    ]
    if (
        run_json.get("status") != "complete"
        or epochs != list(range(1, TRAIN_EPOCHS + 1))
        or missing
        or "accuracy" not in metrics
    ):
        return False, f"status {run_json.get('status')}, epochs {epochs}, missing {missing}"
    return True, ""


def train_campaign(work: Path, kills: int, rng: random.Random) -> list[dict]:
    folder = write_image_folder(work / "train-images", {"a": 60, "b": 60, "c": 60}, size=16)
    store = work / "train.zarr"
    if run(
        [
            "build-aug",
            "--source",
            str(folder),
            "--copies",
            "2",
            "--chunk-size",
            "16",
            "--preview",
            "0",
            "--quiet",
            "--out",
            str(store),
        ]
    ).returncode:
        raise RuntimeError("could not build the training store")
    args = ["train", "--store", str(store), *TRAIN_ARGS]
    duration = timed([*args, "--out", str(work / "run-reference")])
    trials, attempts = [], 0
    while len(trials) < kills and attempts < 4 * kills:  # a kill after the run completed does not count
        attempts += 1
        run_dir = work / f"run-{len(trials)}"
        delay = rng.uniform(0, duration)
        outcome = kill_after([*args, "--out", str(run_dir)], delay)
        run_json = run_dir / "run.json"
        if run_json.exists() and json.loads(run_json.read_text()).get("status") == "complete":
            shutil.rmtree(run_dir)
            continue
        progress = run_dir / "state" / "progress.json"
        done = json.loads(progress.read_text())["epochs_done"] if progress.exists() else 0
        if run_json.exists():
            resumed = run(["train", "--resume", "--out", str(run_dir), "--quiet"])
            how = "train --resume"
        else:  # killed before the run folder was claimed: the same command starts it
            resumed = run([*args, "--out", str(run_dir)])
            how = "the same command"
        complete, why = run_is_complete(run_dir)
        trials.append(
            {
                "trial": len(trials),
                "attempt": attempts,
                "delay_s": round(delay, 2),
                "outcome": outcome,
                "epochs_done_at_kill": done,
                "resumed_with": how,
                "resume_exit": resumed.returncode,
                "resume_error": resumed.stderr.strip()[-300:],
                "complete": complete,
                "why_not": why,
            }
        )
    return trials


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-kills", type=int, default=20)
    parser.add_argument("--train-kills", type=int, default=5)
    parser.add_argument(
        "--corpus", action=argparse.BooleanOptionalAction, default=True, help="run the bad-image corpus too"
    )
    parser.add_argument(
        "--misuse", action=argparse.BooleanOptionalAction, default=True, help="run the misuse cases too"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder [default: a temporary one, removed]")
    parser.add_argument("--json", type=Path, default=None, help="also write the trials here")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="augzarr-campaign-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    try:
        figures = {
            "corpus": corpus_campaign(work) if args.corpus else [],
            "misuse": misuse.run_cases(work) if args.misuse else [],
            "build": build_campaign(work, args.build_kills, rng) if args.build_kills else [],
            "train": train_campaign(work, args.train_kills, rng) if args.train_kills else [],
        }
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    for trial in figures["corpus"]:
        ended = "used" if trial["exit"] == 0 else f"exit {trial['exit']}: {trial['message']}"
        print(
            f"corpus {trial['case']:20} ({trial['expected']}): {ended}; with --skip-bad: exit {trial['skip_bad_exit']}"
            f"{', reported' if trial['skip_bad_reported'] else ''}"
        )
    for trial in figures["misuse"]:
        print(
            f"misuse {trial['category']:16} {trial['case']:48} {trial['outcome']:8} {'as expected' if trial['ok'] else 'NOT AS EXPECTED'}: "
            f"{trial['detail'].replace(str(work), 'WORK')[:160]}"
        )
    for category, row in misuse.counts(figures["misuse"]).items():
        print(
            f"misuse {category}: {row['as expected']}/{row['tried']} as expected "
            f"({row['store']} correct stores, {row['refusal']} one-line refusals, {row['warning']} documented warnings)"
        )
    for trial in figures["build"]:
        print(
            f"build trial {trial['trial']:2}: kill at {trial['delay_s']:5.2f} s ({trial['outcome']}; {trial['state_at_kill']}) "
            f"-> resume exit {trial['resume_exit']}, byte-identical: {trial['byte_identical']}"
        )
    for trial in figures["train"]:
        print(
            f"train trial {trial['trial']:2}: kill at {trial['delay_s']:5.2f} s ({trial['outcome']}; {trial['epochs_done_at_kill']} epochs done) "
            f"-> {trial['resumed_with']} exit {trial['resume_exit']}, complete: {trial['complete']} {trial['why_not']}"
        )
    identical = sum(t["byte_identical"] for t in figures["build"])
    complete = sum(t["complete"] for t in figures["train"])
    redrawn = {
        kind: (figures[kind][-1]["attempt"] - len(figures[kind])) if figures[kind] else 0 for kind in ("build", "train")
    }
    print(
        f"build-aug: {identical}/{len(figures['build'])} kills resumed to a byte-identical store; "
        f"train: {complete}/{len(figures['train'])} kills resumed to a complete run "
        f"(kill times redrawn because the work had already finished: build {redrawn['build']}, train {redrawn['train']})"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return figures


def corpus_ok(trial: dict) -> bool:
    if trial["traceback"]:
        return False
    if trial["expected"] == "valid":
        return trial["exit"] == 0 and trial["skip_bad_exit"] == 0
    return (
        trial["exit"] == 1 and trial["stderr_lines"] == 1 and trial["skip_bad_exit"] == 0 and trial["skip_bad_reported"]
    )


if __name__ == "__main__":
    results = main()
    ok = (
        all(corpus_ok(t) for t in results["corpus"])
        and all(t["ok"] for t in results["misuse"])
        and all(t["byte_identical"] for t in results["build"])
        and all(t["complete"] for t in results["train"])
    )
    sys.exit(0 if ok else 1)
