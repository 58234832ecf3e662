"""The deep CNN on a GPU (Keras on JAX): trained from the store (StoreStream) against numpy arrays of the
same rows already in memory, at batch 128 and a larger batch (issue #10, point 5: target >= 0.95x).

Needs only keras, jax (with CUDA), zarr and numpy: augzarr.trainer.stream imports no TensorFlow, albumentations
or OpenCV (Keras imports OpenCV and matplotlib only if they are installed). The store is built beforehand
on a machine with the builder and carried here; keep it small (it travels with the working tree) and in
an ignored folder, never committed:

    build-aug --source /tmp/cifar --limit 5000 --copies 2 --out data/gpu.zarr --preview 0   # 12,000 rows, ~37 MB
    KERAS_BACKEND=jax python bench/bench_gpu_fit.py --store data/gpu.zarr --out gpu_fit.json

Each case (batch size x input) runs in a fresh process; the cases alternate over --rounds. A case trains
--warmup steps, then timed steps worth --timed-images images split into --windows windows, waiting for
the device at each window's end; its rate is the median of the windows' images/s. While the timed part
runs, a thread samples `nvidia-smi --query-gpu=utilization.gpu,name` every 0.2 s. The in-memory input
is the store's training rows as numpy arrays (repeated to the rows the steps need), fitted with
model.fit(x, y, shuffle=False); the stream is StoreStream with its shuffle, as `train` uses it.
Prints a table and writes everything to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def gpu_sampler(stop: threading.Event, samples: list, names: set) -> None:
    while not stop.is_set():
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu,name", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout
            util, name = out.strip().splitlines()[0].split(", ", 1)
            samples.append(float(util))
            names.add(name)
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            pass
        stop.wait(0.2)


def child(case: dict) -> dict:
    sys.path.insert(0, str(REPO))
    import augzarr

    # the GPU machine runs a copy of the working tree, not an install: there augzarr.trainer is REPO/trainer
    if str(REPO) not in augzarr.__path__:
        augzarr.__path__.append(str(REPO))
    import jax
    import keras
    import numpy as np

    from augzarr.store_format import open_store
    from augzarr.trainer.models import build_model
    from augzarr.trainer.stream import StoreStream

    opened = open_store(case["store"])
    group = opened.group
    shape, n_classes, batch = tuple(group.attrs["image_shape"]), len(group.attrs["class_names"]), case["batch"]
    timed = max(case["windows"], -(-case["timed_images"] // batch))
    window = timed // case["windows"]
    timed = window * case["windows"]
    steps = case["warmup"] + timed
    keras.utils.set_random_seed(0)
    model = build_model("deep", shape, n_classes)
    model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    boundaries = {case["warmup"] - 1 + k * window for k in range(case["windows"] + 1)}
    marks: list[float] = []
    samples: list[float] = []
    names: set[str] = set()
    stop = threading.Event()
    sampler = threading.Thread(target=gpu_sampler, args=(stop, samples, names), daemon=True)

    class Probe(keras.callbacks.Callback):
        def on_train_batch_end(self, step, logs=None):
            if step in boundaries:
                float(logs["loss"])  # wait for the device: JAX dispatches asynchronously
                marks.append(time.perf_counter())
                if step == case["warmup"] - 1:
                    sampler.start()

    if case["input"] == "memory":
        images, labels = group["train/images"][:], group["train/labels"][:].astype(np.int32)
        repeat = -(-steps * batch // len(images))
        images, labels = (
            np.concatenate([images] * repeat)[: steps * batch],
            np.concatenate([labels] * repeat)[: steps * batch],
        )
        model.fit(images, labels, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[Probe()])
    else:
        stream = StoreStream(opened, "train", batch, shuffle=True)
        model.fit(stream, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0, callbacks=[Probe()])
        stream.close()
    stop.set()
    rates = [window * batch / (b - a) for a, b in zip(marks, marks[1:])]
    return {
        "images_per_second": statistics.median(rates),
        "window_rates": rates,
        "timed_steps": timed,
        "gpu_utilization_samples": samples,
        "gpu_names": sorted(names),
        "devices": [str(d) for d in jax.devices()],
        "versions": {"jax": jax.__version__, "keras": keras.__version__},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store")
    parser.add_argument("--batches", default="128,1024")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--timed-images", type=int, default=400_000, help="images per case in the timed part")
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--out", default="gpu_fit.json")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if not args.store:
        parser.error("--store is required")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    common = {
        "store": str(Path(args.store).resolve()),
        "warmup": args.warmup,
        "timed_images": args.timed_images,
        "windows": args.windows,
    }
    cases = [{"batch": int(b), "input": i} for b in args.batches.split(",") for i in ("memory", "stream")]
    results: dict[str, list[dict]] = {}
    for round_ in range(args.rounds):
        for case in cases:
            run = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps({**common, **case})],
                capture_output=True,
                text=True,
                env=env,
            )
            if run.returncode:
                raise SystemExit(f"case {case} failed:\n{run.stderr[-3000:]}")
            out = json.loads(run.stdout.strip().splitlines()[-1])
            results.setdefault(json.dumps(case), []).append(out)
            util = statistics.median(out["gpu_utilization_samples"]) if out["gpu_utilization_samples"] else float("nan")
            print(
                f"round {round_ + 1}: batch {case['batch']} {case['input']:6}: {out['images_per_second']:,.0f} images/s, "
                f"GPU utilisation median {util:.0f}% ({len(out['gpu_utilization_samples'])} samples) on {out['gpu_names'] or out['devices']}",
                flush=True,
            )

    summary = []
    print(
        "\n| batch | input | images/s (median of rounds) | / memory | GPU utilisation (median of samples) |\n| ---: | --- | ---: | ---: | ---: |"
    )
    for case in cases:
        runs = results[json.dumps(case)]
        rate = statistics.median(r["images_per_second"] for r in runs)
        memory = statistics.median(r["images_per_second"] for r in results[json.dumps({**case, "input": "memory"})])
        samples = [s for r in runs for s in r["gpu_utilization_samples"]]
        util = statistics.median(samples) if samples else None
        summary.append(
            {**case, "images_per_second": rate, "ratio_to_memory": rate / memory, "gpu_utilization_median": util}
        )
        print(
            f"| {case['batch']} | {case['input']} | {rate:,.0f} | {rate / memory:.3f} | {'n/a' if util is None else f'{util:.0f}%'} |"
        )
    first = next(iter(results.values()))[0]
    print(f"card: {first['gpu_names'] or 'unknown (no nvidia-smi)'}; devices: {first['devices']}")
    Path(args.out).write_text(json.dumps({"summary": summary, "cases": results, "args": vars(args)}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
