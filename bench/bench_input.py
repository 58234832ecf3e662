"""Training from the store (StoreStream) against the same rows held in memory, on every backend (issue #10).

Each measurement runs in a fresh process (the allocator setting this bench is about is process-wide and
applied once), and the cases alternate round by round so drift on a shared machine hits all of them.

Speed: images/s over --steps timed training steps after --warmup steps, batch --batch, per case:
  backend tensorflow or jax (CPU); model deep (trainer/models.py) or free (Rescaling,
  GlobalAveragePooling2D, Dense: the input path's own ceiling); input memory (tf.data
  from_tensor_slices on TensorFlow, numpy arrays on JAX, both unshuffled: issue #10's reference),
  arrays-shuffled (model.fit(x, y, shuffle=True) on numpy arrays, as a notebook fits: a fresh row order
  each epoch and a gathered copy per batch, the work the stream's shuffle also does) or stream (what
  train feeds: StoreStream.fit_input(), a window at a time through tf.data on TensorFlow, the PyDataset on
  JAX); on TensorFlow also slices-shuffled (from_tensor_slices(...).shuffle(len(x))),
  stream-pydataset (the StoreStream itself given to fit: Keras' PyDataset adapter, a Python call per
  batch, what train fed before), stream-nofix (that, with trainer/allocator.py disabled: the behaviour
  before the fix) and tfreader (trainer/tf_reader.py:
  the same batches read by a tf.data pipeline, no Python per batch); with --onednn off, TensorFlow runs its
  own kernels instead of oneDNN's (TF_ENABLE_ONEDNN_OPTS=0: TensorFlow's default on CPUs without
  AVX-512 VNNI/BF16, where the slowdown was found).
Memory (--memory): --epochs whole epochs of the free model from each stream input of --inputs and the
tf.data reader;
peak and current RSS after the first and after the last epoch.

    build-aug --source /tmp/cifar --limit 8000 --copies 2 --out /tmp/speed.zarr --preview 0
    python bench/bench_input.py --store /tmp/speed.zarr --rounds 3 --onednn both
    python bench/bench_input.py --store /tmp/speed.zarr --memory --epochs 8 --onednn both
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def child(case: dict) -> dict:
    """One case, in this fresh process: returns its measurements."""
    import resource
    import time

    if case["input"] == "stream-nofix":
        import augzarr.trainer.stream as stream_module

        stream_module.restore_malloc_thresholds = lambda: False
    import keras
    import numpy as np

    from augzarr.store_format import open_store
    from augzarr.trainer.models import build_model
    from augzarr.trainer.stream import StoreStream

    opened = open_store(case["store"])
    group = opened.group
    shape, n_classes, batch = tuple(group.attrs["image_shape"]), len(group.attrs["class_names"]), case["batch"]
    keras.utils.set_random_seed(0)
    if case["model"] == "deep":
        model = build_model("deep", shape, n_classes)
    else:
        model = keras.Sequential(
            [
                keras.Input(shape, dtype="uint8"),
                keras.layers.Rescaling(1 / 255),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(n_classes, activation="softmax"),
            ]
        )
    model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    def rss_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    class Probe(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.marks, self.epochs = {}, []

        def on_train_batch_end(self, step, logs=None):
            if step in (case["warmup"] - 1, case["warmup"] + case["steps"] - 1):
                float(logs["loss"])  # wait for the step (JAX dispatches asynchronously)
                usage = resource.getrusage(resource.RUSAGE_SELF)
                self.marks[step] = (time.perf_counter(), usage.ru_minflt, usage.ru_stime)

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append(
                {
                    "seconds": time.perf_counter() - self.started,
                    "rss_mib": rss_mib(),
                    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                }
            )

    probe = Probe()
    memory = case["input"] == "memory"
    if memory:
        images, labels = group["train/images"][:], group["train/labels"][:].astype(np.int32)
    if case.get("epochs"):  # memory use over whole epochs
        stream = StoreStream(opened, "train", batch, shuffle=True)
        if case["input"] == "tfreader":
            from augzarr.trainer.tf_reader import store_dataset

            data = store_dataset(opened, "train", batch, shuffle=True)
        else:
            data = stream if case["input"] in ("stream-pydataset", "stream-nofix") else stream.fit_input()
        model.fit(
            data,
            steps_per_epoch=stream.batches_per_epoch,
            epochs=case["epochs"],
            shuffle=False,
            verbose=0,
            callbacks=[probe],
        )
        stream.close()
        rows = stream.rows
        return {"epochs": probe.epochs, "images_per_second": [rows / e["seconds"] for e in probe.epochs]}
    steps = case["warmup"] + case["steps"]
    if case["input"] in ("arrays-shuffled", "slices-shuffled"):
        images, labels = group["train/images"][:], group["train/labels"][:].astype(np.int32)
        if steps > -(-len(images) // batch):
            raise SystemExit(f"--warmup + --steps need {steps * batch} rows in memory; the store has {len(images)}")
    if (
        case["input"] == "arrays-shuffled"
    ):  # what a notebook does: Keras shuffles the arrays' rows each epoch, gathers each batch
        model.fit(
            images,
            labels,
            batch_size=batch,
            steps_per_epoch=steps,
            epochs=1,
            shuffle=True,
            verbose=0,
            callbacks=[probe],
        )
    elif case["input"] == "slices-shuffled":  # tf.data's shuffle buffer over the whole set, reshuffled each epoch
        import tensorflow as tf

        data = (
            tf.data.Dataset.from_tensor_slices((images, labels))
            .shuffle(len(images))
            .repeat()
            .batch(batch)
            .prefetch(tf.data.AUTOTUNE)
        )
        model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[probe])
    elif memory and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        data = tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(batch).prefetch(tf.data.AUTOTUNE)
        model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[probe])
    elif memory:
        rows = steps * batch
        if rows > len(images):
            raise SystemExit(f"--warmup + --steps need {rows} rows in memory; the store has {len(images)}")
        model.fit(images[:rows], labels[:rows], batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[probe])
    elif case["input"] == "tfreader":
        from augzarr.trainer.tf_reader import store_dataset

        data = store_dataset(opened, "train", batch, shuffle=True)
        model.fit(data, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0, callbacks=[probe])
    else:
        stream = StoreStream(opened, "train", batch, shuffle=True)
        data = stream if case["input"] in ("stream-pydataset", "stream-nofix") else stream.fit_input()
        model.fit(data, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0, callbacks=[probe])
        stream.close()
    (t0, f0, s0), (t1, f1, s1) = probe.marks[case["warmup"] - 1], probe.marks[steps - 1]
    return {
        "images_per_second": case["steps"] * batch / (t1 - t0),
        "minflt_per_step": (f1 - f0) / case["steps"],
        "sys_seconds_per_step": (s1 - s0) / case["steps"],
    }


def run_case(case: dict) -> dict:
    env = {**os.environ, "KERAS_BACKEND": case["backend"], "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    if case["onednn"] == "off":
        env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    result = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(case)], capture_output=True, text=True, env=env, cwd=REPO
    )
    if result.returncode:
        raise SystemExit(f"case {case} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def speed_cases(args) -> list[dict]:
    cases = []
    for backend in args.backends.split(","):
        for onednn in (
            (("default", "off") if args.onednn == "both" else (args.onednn,)) if backend == "tensorflow" else ("n/a",)
        ):
            for model in args.models.split(","):
                inputs = (
                    (
                        "memory",
                        "arrays-shuffled",
                        "slices-shuffled",
                        "stream",
                        "stream-pydataset",
                        "stream-nofix",
                        "tfreader",
                    )
                    if backend == "tensorflow"
                    else ("memory", "arrays-shuffled", "stream")
                )
                for input_ in (i for i in inputs if i in args.inputs.split(",")):
                    cases.append({"backend": backend, "onednn": onednn, "model": model, "input": input_})
    return cases


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="tensorflow,jax")
    parser.add_argument("--models", default="deep,free")
    parser.add_argument(
        "--inputs",
        default="memory,arrays-shuffled,stream,stream-pydataset,stream-nofix",
        help="input kinds to time (memory is the reference; arrays-shuffled, when timed, the second one)",
    )
    parser.add_argument("--onednn", choices=("default", "off", "both"), default="default")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40, help="timed steps of the deep CNN")
    parser.add_argument(
        "--free-steps", type=int, default=140, help="timed steps of the near-free model (fast: more steps)"
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="peak RSS over --epochs epochs from each stream input of --inputs (TensorFlow)",
    )
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    common = {"store": str(Path(args.store).resolve()), "batch": args.batch, "warmup": args.warmup, "steps": args.steps}
    print(
        subprocess.run(["sh", "-c", "lscpu | grep 'Model name'; nproc"], capture_output=True, text=True).stdout.strip()
    )

    if args.memory:
        print(
            f"| oneDNN | input | epoch 1 peak RSS | epoch {args.epochs} peak RSS | epoch 1 RSS | epoch {args.epochs} RSS | images/s (median epoch) |"
        )
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for onednn in ("default", "off") if args.onednn == "both" else (args.onednn,):
            for input_ in (i for i in args.inputs.split(",") if i.startswith("stream") or i == "tfreader"):
                case = {
                    **common,
                    "backend": "tensorflow",
                    "onednn": onednn,
                    "model": "free",
                    "input": input_,
                    "epochs": args.epochs,
                }
                epochs, rates = (out := run_case(case))["epochs"], out["images_per_second"]
                first, last = epochs[0], epochs[-1]
                print(
                    f"| {onednn} | {input_} | {first['peak_rss_mib']:,.0f} MiB | {last['peak_rss_mib']:,.0f} MiB | "
                    f"{first['rss_mib']:,.0f} MiB | {last['rss_mib']:,.0f} MiB | {statistics.median(rates):,.0f} |",
                    flush=True,
                )
                print(
                    f"  peak RSS after each epoch (MiB): {[round(e['peak_rss_mib']) for e in epochs]}",
                    file=sys.stderr,
                    flush=True,
                )
        return

    cases = speed_cases(args)
    results: dict[str, list[dict]] = {}
    for round_ in range(args.rounds):
        for case in cases:
            key = json.dumps(case)
            steps = {"steps": args.free_steps} if case["model"] == "free" else {}
            results.setdefault(key, []).append(out := run_case({**common, **case, **steps}))
            print(
                f"round {round_ + 1}: {case} -> {out['images_per_second']:,.0f} images/s, {out['minflt_per_step']:,.0f} faults/step",
                flush=True,
            )

    def median(case: dict, field: str = "images_per_second") -> float:
        return statistics.median(r[field] for r in results[json.dumps(case)])

    def ratio(case: dict, reference: str) -> str:
        key = json.dumps({**case, "input": reference})
        return f"{median(case) / median(json.loads(key)):.2f}" if key in results else "-"

    print(
        f"\n| backend | oneDNN | model | input | images/s (median of {args.rounds}) | / memory | / arrays-shuffled "
        "| minor faults per step | system s per step |"
    )
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for case in cases:
        print(
            f"| {case['backend']} | {case['onednn']} | {case['model']} | {case['input']} | {median(case):,.0f} | "
            f"{ratio(case, 'memory')} | {ratio(case, 'arrays-shuffled')} | {median(case, 'minflt_per_step'):,.0f} | "
            f"{median(case, 'sys_seconds_per_step'):.3f} |"
        )
    print("\nimages/s per round, and each round's ratio to the same round's memory and arrays-shuffled cases (median):")
    for case in cases:
        rates = [r["images_per_second"] for r in results[json.dumps(case)]]
        paired = ""
        for reference in ("memory", "arrays-shuffled"):
            if (key := json.dumps({**case, "input": reference})) in results:
                ratios = [a / r["images_per_second"] for a, r in zip(rates, results[key])]
                paired += f"; / {reference} {[round(x, 2) for x in ratios]} ({statistics.median(ratios):.2f})"
        print(
            f"  {case['backend']:10} {case['onednn']:7} {case['model']:4} {case['input']:16} {[round(r) for r in rates]}{paired}"
        )


if __name__ == "__main__":
    main()
