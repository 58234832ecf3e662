"""run.json and state/progress.json as typed records (trainer/records.py, issue #22 point 3): read and written in one
place, and the records earlier augzarr wrote (fields missing) still resume, evaluate and report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

# run.json as the first augzarr wrote it (c14d931): no store_source, model, mix_alpha, devices, distributed,
# updated_utc or intended_use; its options before --lr-schedule (then "constant"), --online, --mix and the rest
OLDEST_RUN_KEYS = (
    "status",
    "run_dir",
    "options",
    "store_fingerprint",
    "backend",
    "versions",
    "parameters",
    "learning_rate",
    "train_rows",
    "class_names",
    "image_shape",
)
OLDEST_OPTIONS = ("store", "model", "epochs", "batch_size", "optimizer", "learning_rate", "seed", "buffer_chunks")


def as_oldest(folder: Path, **changes) -> dict:
    """Rewrite folder's run.json in the oldest shape (a complete run keeps evaluated_on and finished_utc, which it had)."""
    run = json.loads((folder / "run.json").read_text())
    kept = OLDEST_RUN_KEYS + (("evaluated_on", "finished_utc") if run["status"] == "complete" else ())
    old = {key: run[key] for key in kept}
    old["options"] = {key: run["options"][key] for key in OLDEST_OPTIONS}
    old.update(changes)
    (folder / "run.json").write_text(json.dumps(old, indent=2))
    return old


@pytest.fixture(scope="module")
def one_epoch(small_store, tmp_path_factory) -> Path:
    """A finished 1-epoch shallow run at a constant rate (as every run was before --lr-schedule existed)."""
    from augzarr.trainer.training import train_run

    run_dir = tmp_path_factory.mktemp("records") / "run"
    train_run(
        {"store": str(small_store), "epochs": 1, "batch_size": 16, "model": "shallow", "lr_schedule": "constant"},
        out=run_dir,
        verbose=0,
        say=lambda _: None,
    )
    return run_dir


def test_an_old_run_stopped_after_an_epoch_resumes_with_the_options_it_ran_under(one_epoch, tmp_path):
    """Before the fix an option the run recorded before it existed took today's default: the old run (constant rate)
    was refused with --lr-schedule constant and, resumed without it, recorded and reported a cosine schedule."""
    from augzarr.trainer.training import train_run

    run_dir = tmp_path / "run"
    shutil.copytree(one_epoch, run_dir)
    as_oldest(run_dir, status="running", run_dir=str(run_dir))
    assert (
        json.loads((run_dir / "state" / "progress.json").read_text())["epochs_done"] == 1
    )  # progress.json: the same shape then
    said = []
    result = train_run({"epochs": 2, "lr_schedule": "constant"}, out=run_dir, resume=True, verbose=0, say=said.append)
    assert result.resumed_from == 1 and [row["epoch"] for row in result.history] == [1, 2] and "resuming" in said[0]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "complete" and run["options"]["lr_schedule"] == "constant" and run["options"]["epochs"] == 2
    assert (
        run["model"]["spec"] == "shallow"
        and run["model"]["kind"] == "built-in"
        and run["model"]["parameters"] == run["parameters"] > 0
    )
    assert run["devices"] is None and run["distributed"] is False and run["intended_use"] is None
    assert run["store_source"]["content_hash"] == run["store_fingerprint"]["content_hash"]
    card = (run_dir / "model_card.md").read_text()
    assert "(constant), batch size 16, epochs 2" in card and "- model: `shallow`" in card and "- devices: one" in card


def test_an_old_finished_run_evaluates_and_recognises_its_source(one_epoch, small_store, tmp_path):
    from augzarr.trainer.evaluate import evaluate_on_source, evaluate_on_store, training_warning

    run_dir = tmp_path / "run"  # evaluate's library calls, in this process (Keras loads once)
    shutil.copytree(one_epoch, run_dir)
    old = as_oldest(run_dir)
    metrics, _ = evaluate_on_store(run_dir, str(small_store), None, 256)
    assert metrics["count"] > 0 and metrics["class_names"] == old["class_names"]
    # its store gone: the source folder is recognised from the fingerprint's content hash alone (no store_source then)
    as_oldest(run_dir, options={**old["options"], "store": str(tmp_path / "gone.zarr")})
    images = small_store.parent / "images"
    metrics, _ = evaluate_on_source(run_dir, images, 256)
    assert metrics["training_images"]["count"] is None and metrics["training_source"] is True
    assert "holds the images the model's store was built from (same folder or content hash)" in training_warning(
        metrics, images
    )


def test_records_of_earlier_augzarr_read_as_those_runs_ran():
    from augzarr.trainer.options import TrainOptions
    from augzarr.trainer.records import DevicesUsed, ModelInfo, RunRecord

    oldest = RunRecord.from_json(
        {
            "status": "running",
            "run_dir": "r",
            "options": {"model": "deep", "epochs": 3, "gone": 1},
            "store_fingerprint": {"identity": {"a": 1}, "content_hash": "sha256:x", "chunk_crc32": None},
            "parameters": 42,
        }
    )
    assert oldest.options == TrainOptions(model="deep", epochs=3, lr_schedule="constant")  # unknown options left out
    assert oldest.model == ModelInfo("deep", "built-in", parameters=42) and oldest.mix_alpha is None
    assert oldest.source_for_evaluate.content_hash == "sha256:x" and oldest.store_source is None
    assert oldest.devices == DevicesUsed() and oldest.updated_utc is None and oldest.intended_use is None
    # before "distributed", devices were listed only when the batches were split over them; before mix_alpha, the mix's default
    listed = RunRecord.from_json(
        {
            "status": "complete",
            "options": {"mix": "cutmix", "online": " shift , flip,flip"},
            "devices": ["cpu:0", "cpu:1"],
            "device_count": 2,
        }
    )
    assert listed.devices == DevicesUsed(("cpu:0", "cpu:1"), True) and listed.mix_alpha == 1.0
    assert listed.options.online == "flip,shift" and listed.options.lr_schedule == "constant"
    unreadable = RunRecord.from_json({"status": "running", "options": "not options"})
    assert unreadable.options is None and unreadable.model is None


def test_a_record_survives_its_own_round_trip_and_a_damaged_file_reads_as_none(one_epoch, tmp_path):
    from augzarr.trainer.records import Progress, RunRecord

    written = json.loads((one_epoch / "run.json").read_text())
    record = RunRecord.read(one_epoch)
    assert record.is_complete and record.to_json() == written  # every field written is read back, none invented
    assert RunRecord.from_json(record.to_json()) == record
    (tmp_path / "run.json").write_text("[1, 2")
    assert RunRecord.read(tmp_path) is None and RunRecord.read(tmp_path / "absent") is None
    assert Progress.read(tmp_path) == Progress()  # no state/progress.json: no epoch finished
    progress = Progress.read(one_epoch)
    assert progress.epochs_done == 1 and progress.checkpoint == "epoch-0001.keras" and len(progress.history) == 1
