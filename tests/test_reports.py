"""Issue 14 point 6, reports a careful reader trusts: per-class accuracy with Wilson intervals, the
expected calibration error and a reliability diagram, a grid of the most confident mistakes, and
provenance that travels with the data (build-aug --license/--provenance -> the store -> inspect-aug
and every model card), with the card's intended-use section (train --intended-use)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, write_image_folder
from PIL import Image

from augzarr.store_format import StoreAttrs, open_store
from augzarr.trainer.metrics import (
    CALIBRATION_BINS,
    Z_95,
    calibration,
    confidently_wrong,
    metrics_from_probabilities,
    wilson_interval,
)
from augzarr.trainer.report import median_training_rate

LICENSE = "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"
PROVENANCE = "Drawn by the test suite's smooth_image().\nNo people appear in them; nothing to consent to."
INTENDED = "Teaching the augzarr workflow only.\nOut of scope: any decision about real ants, bees or cows."
FAST = ["--epochs", "1", "--batch-size", "16", "--model", "shallow", "--quiet"]


# -- the numbers ------------------------------------------------------------------------------------


def test_wilson_interval_matches_known_values():
    z2 = Z_95**2
    low, high = wilson_interval(0, 10)  # no success: [0, z^2 / (n + z^2)], not the normal approximation's [0, 0]
    assert low == 0.0 and high == pytest.approx(z2 / (10 + z2)) and high == pytest.approx(0.27753, abs=1e-5)
    low, high = wilson_interval(10, 10)  # all successes: [n / (n + z^2), 1]
    assert low == pytest.approx(10 / (10 + z2)) and low == pytest.approx(0.72247, abs=1e-5) and high == 1.0
    low, high = wilson_interval(50, 100)  # statsmodels' proportion_confint(50, 100, method="wilson")
    assert (low, high) == (pytest.approx(0.403832, abs=1e-6), pytest.approx(0.596168, abs=1e-6))
    # vectorised over classes; a class of no images has no interval; more images, a narrower interval
    low, high = wilson_interval(np.array([5, 0, 500]), np.array([10, 0, 1000]))
    assert np.isnan(low[1]) and np.isnan(high[1])
    assert high[0] - low[0] > 5 * (high[2] - low[2]) and low[0] < 0.5 < high[0] and low[2] < 0.5 < high[2]


def test_the_training_rate_is_the_median_epoch_from_run_json_or_history_csv_rows():
    # run.json rows hold floats, history.csv rows strings; epochs resumed from runs older than the column have none
    assert (
        median_training_rate(
            [{"images_per_second": 900.0}, {"images_per_second": 2000.0}, {"images_per_second": 1500.0}]
        )
        == 1500.0
    )
    assert (
        median_training_rate(
            [{"images_per_second": ""}, {"images_per_second": "1000.5"}, {"images_per_second": "3000"}]
        )
        == 2000.25
    )
    assert median_training_rate([{"epoch": 1}, {"images_per_second": ""}]) is None


def test_expected_calibration_error_of_a_hand_made_prediction_set():
    # 4 predictions: two at confidence 0.9 (one right), one right at 0.6, one right at 0.7.
    # Bins of 1/15: 0.9 -> (0.867, 0.933], 0.6 -> (0.533, 0.6], 0.7 -> (0.667, 0.733].
    # ECE = 2/4 * |0.5 - 0.9| + 1/4 * |1 - 0.6| + 1/4 * |1 - 0.7| = 0.2 + 0.1 + 0.075 = 0.375
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    found = calibration(probabilities, labels)
    assert found["ece"] == pytest.approx(0.375) and found["bins"] == CALIBRATION_BINS == 15
    counts = {round(row["upper"] * 15): row["count"] for row in found["table"] if row["count"]}
    assert counts == {9: 1, 11: 1, 14: 2}  # bin 9 holds 0.6 = 9/15 (upper edge included), bin 14 holds 0.9
    assert found["table"][13]["accuracy"] == 0.5 and found["table"][13]["mean_confidence"] == pytest.approx(0.9)
    assert found["mean_confidence"] == pytest.approx(0.775)

    # right exactly as often as confident: ECE 0; always right at confidence 1: ECE 0 (1.0 goes in the last bin)
    assert calibration(np.tile([0.8, 0.2], (10, 1)), np.array([0] * 8 + [1] * 2))["ece"] == pytest.approx(0, abs=1e-12)
    certain = calibration(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]))
    assert certain["ece"] == 0 and certain["table"][-1]["count"] == 2
    # confidently wrong every time: ECE is the confidence itself
    assert calibration(np.tile([0.95, 0.05], (4, 1)), np.ones(4, int))["ece"] == pytest.approx(0.95)


def test_confident_mistakes_are_ranked_and_per_class_intervals_come_with_the_metrics():
    probabilities = np.array(
        [[0.7, 0.2, 0.1], [0.1, 0.85, 0.05], [0.2, 0.2, 0.6], [0.9, 0.05, 0.05], [0.85, 0.1, 0.05]]
    )
    labels = np.array([0, 0, 1, 1, 1])
    names = ["ant", "bee", "cow"]
    mistakes = confidently_wrong(probabilities, labels, names)
    assert [(m["row"], m["true"], m["predicted"]) for m in mistakes] == [
        (3, "bee", "ant"),
        (1, "ant", "bee"),
        (4, "bee", "ant"),
        (2, "bee", "cow"),
    ]
    assert [m["confidence"] for m in mistakes] == pytest.approx([0.9, 0.85, 0.85, 0.6])  # ties by row
    assert len(confidently_wrong(np.tile([0.9, 0.1], (40, 1)), np.ones(40, int), ["a", "b"])) == 16

    metrics = metrics_from_probabilities(probabilities, labels, names)
    assert metrics["per_class"]["ant"]["ci95"] == pytest.approx(list(map(float, wilson_interval(1, 2))))
    assert metrics["per_class"]["bee"]["ci95"] == [0.0, pytest.approx(float(wilson_interval(0, 3)[1]))]
    assert metrics["per_class"]["cow"]["ci95"] is None and metrics["per_class"]["cow"]["count"] == 0
    assert metrics["accuracy_ci95"] == pytest.approx(list(map(float, wilson_interval(1, 5))))
    assert metrics["calibration"]["ece"] == pytest.approx(calibration(probabilities, labels)["ece"])
    assert metrics["confidently_wrong"] == mistakes
    json.dumps(metrics, allow_nan=False)  # what metrics.json and evaluate --json hold: plain JSON


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # decodes whole: not cut short
        return image.size


def test_mistakes_grid_and_reliability_diagram_are_real_images(tmp_path):
    from augzarr.trainer.report import plot_mistakes, plot_reliability

    rng = np.random.default_rng(0)
    mistakes = [
        {"row": i, "true": "a-rather-long-class-name-indeed", "predicted": "b", "confidence": 0.99 - i / 100}
        for i in range(16)
    ]
    plot_mistakes(rng.integers(0, 256, (16, 12, 12, 1), dtype=np.uint8), mistakes, tmp_path / "gray.png", "grayscale")
    width, height = png_size(tmp_path / "gray.png")
    assert 600 <= width <= 2000 and 600 <= height <= 2000  # 4 x 4 tiles
    plot_mistakes(rng.integers(0, 256, (3, 12, 12, 3), dtype=np.uint8), mistakes[:3], tmp_path / "three.png", "rgb")
    three = png_size(tmp_path / "three.png")
    assert three[0] < width and three[1] < height / 2  # one row of 3 tiles
    plot_mistakes(np.zeros((0, 12, 12, 3), np.uint8), [], tmp_path / "none.png", "no mistakes")
    assert min(png_size(tmp_path / "none.png")) >= 100
    plot_reliability(
        calibration(rng.dirichlet([1, 1, 1], 200), rng.integers(0, 3, 200)), tmp_path / "reliability.png", "random"
    )
    assert all(400 <= side <= 2000 for side in png_size(tmp_path / "reliability.png"))


def test_class_names_no_font_here_has_are_drawn_by_index_or_in_a_font_that_has_them_without_a_warning(tmp_path):
    """Issue 21 point 11: CJK class names leaked matplotlib's 'Glyph ... missing' UserWarning from the confusion plot."""
    import warnings

    import matplotlib.pyplot as plt

    from augzarr.trainer.report import confusion_figure, plot_confusion, plot_mistakes

    names = ["猫", "café", "犬"]
    metrics = {"confusion_matrix": [[3, 1, 0], [0, 4, 1], [2, 0, 2]], "class_names": names}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_confusion(metrics, tmp_path / "confusion.png", "a folder named 写真")
        mistakes = [{"row": 0, "true": "猫", "predicted": "犬", "confidence": 0.9}]
        plot_mistakes(np.zeros((1, 8, 8, 3), np.uint8), mistakes, tmp_path / "mistakes.png", "写真")
    assert [str(w.message) for w in caught] == []
    assert min(png_size(tmp_path / "confusion.png")) >= 200
    from augzarr.fonts import font_charmap, font_with_glyphs

    figure = confusion_figure(metrics, "t")
    figure.canvas.draw()
    axis = figure.axes[0]
    for ticks in (axis.get_xticklabels(), axis.get_yticklabels()):
        for index, (tick, name) in enumerate(zip(ticks, names)):
            if font_with_glyphs(name) is None:  # no font here has it (DejaVu has no CJK): its index
                assert tick.get_text() == str(index)
            else:  # its name, in a font that has every glyph of it
                assert tick.get_text() == name and {ord(c) for c in name} <= font_charmap(
                    tick.get_fontproperties().get_file()
                )
    if font_with_glyphs("猫") is None:
        assert "class index" in axis.get_xlabel()
    plt.close(figure)


# -- provenance through build-aug, inspect-aug, train and evaluate -----------------------------------


@pytest.fixture(scope="module")
def provenance_store(tmp_path_factory) -> Path:
    """3 classes of 8x8 images, built with --license and --provenance (two lines)."""
    root = tmp_path_factory.mktemp("reports-store")
    images = write_image_folder(root / "images", {"ant": 10, "bee": 9, "cow": 8}, size=8)
    out = root / "store.zarr"
    run_cli(
        "build-aug",
        "--source",
        str(images),
        "--out",
        str(out),
        "--copies",
        "1",
        "--chunk-size",
        "8",
        "--preview",
        "0",
        "--val-fraction",
        "0.3",
        "--license",
        LICENSE,
        "--provenance",
        PROVENANCE,
        check=True,
    )
    return out


@pytest.fixture(scope="module")
def described_run(provenance_store, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reports-runs") / "run"
    run_cli(
        "train", "--store", str(provenance_store), *FAST, "--out", str(run_dir), "--intended-use", INTENDED, check=True
    )
    return run_dir


def test_build_records_license_and_provenance_and_inspect_shows_them(provenance_store):
    attrs = open_store(provenance_store).attrs
    assert attrs.license == LICENSE and attrs.provenance == PROVENANCE
    shown = run_cli("inspect-aug", "--store", str(provenance_store), check=True).stdout
    assert f"license      {LICENSE}\n" in shown
    assert (
        "provenance   Drawn by the test suite's smooth_image().\n             No people appear in them; nothing to consent to.\n"
        in shown
    )
    summary = json.loads(run_cli("inspect-aug", "--store", str(provenance_store), "--json", check=True).stdout)
    assert summary["license"] == LICENSE and summary["provenance"] == PROVENANCE


def test_the_python_api_builds_with_provenance_and_returns_it(tmp_path):
    import augzarr

    images = write_image_folder(tmp_path / "images", {"ant": 3, "bee": 3}, size=8)
    store = augzarr.build(
        str(images), out=str(tmp_path / "s.zarr"), copies=1, license=LICENSE, provenance=PROVENANCE, progress=False
    )
    assert (store.provenance["license"], store.provenance["provenance"]) == (LICENSE, PROVENANCE)
    assert f"license      {LICENSE}" in store.summary()
    with pytest.raises(augzarr.UserError, match="--license is empty"):
        augzarr.build(str(images), out=str(tmp_path / "t.zarr"), license="", progress=False)


def test_other_provenance_for_a_complete_store_needs_overwrite(provenance_store):
    source = open_store(provenance_store).attrs.source.location
    common = [
        "build-aug",
        "--source",
        source,
        "--out",
        str(provenance_store),
        "--copies",
        "1",
        "--chunk-size",
        "8",
        "--preview",
        "0",
        "--val-fraction",
        "0.3",
    ]
    same = run_cli(*common, "--license", LICENSE, "--provenance", PROVENANCE, check=True)
    assert "already complete with these arguments" in same.stdout + same.stderr
    other = run_cli(*common, "--license", "All rights reserved", "--provenance", PROVENANCE)
    assert other.returncode == 1 and len(other.stderr.strip().splitlines()) == 1
    assert (
        'license "CC BY 4.0' in other.stderr
        and '-> "All rights reserved"' in other.stderr
        and "--overwrite" in other.stderr
    )
    assert open_store(provenance_store).attrs.license == LICENSE  # untouched


@pytest.mark.parametrize(
    "option, value, why",
    [
        ("--license", "  ", "--license is empty"),
        ("--provenance", "scraped\x1b[2J", "--provenance holds the control character '\\x1b'"),
        ("--license", "x" * 10_001, "--license has 10,001 characters; keep it to 10,000"),
    ],
)
def test_bad_provenance_text_is_refused_in_one_line_before_any_work(tmp_path, option, value, why):
    images = write_image_folder(tmp_path / "images", {"ant": 3, "bee": 3}, size=8)
    result = run_cli(
        "build-aug", "--source", str(images), "--out", str(tmp_path / "s.zarr"), "--preview", "0", option, value
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and why in result.stderr
    assert not (tmp_path / "s.zarr").exists()


def test_a_store_built_before_the_provenance_fields_still_opens(provenance_store, tmp_path):
    old = tmp_path / "old.zarr"
    shutil.copytree(provenance_store, old)
    meta = json.loads((old / "zarr.json").read_text())
    del meta["attributes"]["license"], meta["attributes"]["provenance"]
    (old / "zarr.json").write_text(json.dumps(meta))
    attrs = open_store(old).attrs
    assert attrs.license is None and attrs.provenance is None
    assert StoreAttrs.from_json(meta["attributes"], str(old)).license is None
    shown = run_cli("inspect-aug", "--store", str(old), check=True).stdout
    assert "license      not recorded (build-aug --license TEXT)" in shown and "provenance   not recorded" in shown


def card_table(card: str) -> dict[str, list[str]]:
    """The card's per-class table: class -> [images, accuracy, 95% interval]."""
    rows = re.findall(r"^\| (\w+) \| ([\d,]+) \| ([\d.]+|n/a) \| ([\d.\-]+|n/a) \|$", card, flags=re.M)
    return {name: rest for name, *rest in rows}


def test_the_run_folder_reports_intervals_calibration_and_mistakes(described_run):
    metrics = json.loads((described_run / "metrics.json").read_text())
    card = (described_run / "model_card.md").read_text()
    # per-class accuracy with its Wilson interval, in metrics.json and in the card's table
    table = card_table(card)
    assert set(table) == {"ant", "bee", "cow"}
    for name, row in metrics["per_class"].items():
        right = round(row["accuracy"] * row["count"])
        assert row["ci95"] == pytest.approx(list(map(float, wilson_interval(right, row["count"]))))
        assert table[name] == [
            str(row["count"]),
            f"{row['accuracy']:.3f}",
            f"{row['ci95'][0]:.3f}-{row['ci95'][1]:.3f}",
        ]
    # calibration: the ECE is the table's weighted gap, and the card states it instead of "not calibrated"
    found = metrics["calibration"]
    table_rows = [r for r in found["table"] if r["count"]]
    assert sum(r["count"] for r in table_rows) == metrics["count"]
    assert found["ece"] == pytest.approx(
        sum(r["count"] / metrics["count"] * abs(r["accuracy"] - r["mean_confidence"]) for r in table_rows)
    )
    assert f"expected calibration error (ECE) on val: {found['ece']:.3f}" in card
    assert f"expected calibration error is {found['ece']:.3f}" in card and "not calibrated" not in card
    assert "15 equal-width bins" in card
    # the pictures, linked from the card
    for name in ("reliability.png", "mistakes.png"):
        assert f"]({name})" in card
        assert all(200 <= side <= 4000 for side in png_size(described_run / name)), name
    mistakes = metrics["confidently_wrong"]
    assert mistakes  # one epoch on 8x8 images leaves mistakes to show
    assert len(mistakes) == metrics["count"] - sum(
        np.diag(metrics["confusion_matrix"])
    )  # fewer than 16 here: every one
    assert [m["confidence"] for m in mistakes] == sorted((m["confidence"] for m in mistakes), reverse=True)
    for m in mistakes:
        assert f"| {m['row']} | {m['true']} | {m['predicted']} | {m['confidence']:.3f} |" in card


def test_the_card_repeats_the_store_provenance_and_holds_the_intended_use(described_run):
    card = (described_run / "model_card.md").read_text()
    assert f"> {LICENSE}\n" in card
    assert "> Drawn by the test suite's smooth_image().\n> No people appear in them; nothing to consent to.\n" in card
    section = card.split("## Intended use and out-of-scope uses\n", 1)[1].split("\n## ", 1)[0]
    assert (
        section.strip()
        == "> Teaching the augzarr workflow only.\n> Out of scope: any decision about real ants, bees or cows."
    )
    assert json.loads((described_run / "run.json").read_text())["intended_use"] == INTENDED


def test_without_provenance_or_intended_use_the_card_says_they_were_not_given(small_store, tmp_path):
    from augzarr.trainer.training import train_run

    run_dir = tmp_path / "run"  # in this process: the card is the library's, train's command line is tested above
    train_run(
        {"store": str(small_store), "epochs": 1, "batch_size": 16, "model": "shallow"},
        out=run_dir,
        verbose=0,
        say=lambda _: None,
    )
    card = (run_dir / "model_card.md").read_text()
    assert "- license: not recorded in the store (build-aug --license TEXT records it)" in card
    assert "- provenance: not recorded in the store (build-aug --provenance TEXT records it)" in card
    section = card.split("## Intended use and out-of-scope uses\n", 1)[1].split("\n## ", 1)[0]
    assert "Not given" in section and "train --intended-use TEXT" in section
    assert json.loads((run_dir / "run.json").read_text())["intended_use"] is None


def test_a_bad_intended_use_is_refused_before_training(small_store, tmp_path):
    result = run_cli("train", "--store", str(small_store), *FAST, "--out", str(tmp_path / "run"), "--intended-use", "")
    assert (
        result.returncode == 2
        and result.stderr.strip() == "train: error: --intended-use is empty: give the text, or leave the option out"
    )
    assert not (tmp_path / "run").exists()


def test_evaluate_writes_the_same_reports_beside_its_json(described_run, provenance_store, tmp_path):
    out = tmp_path / "results" / "eval.json"
    result = run_cli(
        "evaluate", "--model", str(described_run), "--store", str(provenance_store), "--json", str(out), check=True
    )
    written = json.loads(out.read_text())
    trained = json.loads((described_run / "metrics.json").read_text())
    assert written["reports"] == {"reliability_diagram": "eval-reliability.png", "mistakes_grid": "eval-mistakes.png"}
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "eval-mistakes.png",
        "eval-reliability.png",
        "eval.json",
    ]  # no scratch left
    for name in written["reports"].values():
        assert all(200 <= side <= 4000 for side in png_size(out.parent / name)), name
    assert written["per_class"] == trained["per_class"]  # the same split, the same model: the same intervals
    assert written["calibration"]["ece"] == pytest.approx(trained["calibration"]["ece"], abs=1e-6)
    assert [m["row"] for m in written["confidently_wrong"]] == [m["row"] for m in trained["confidently_wrong"]]
    low, high = written["accuracy_ci95"]
    assert f"95% interval of the accuracy (Wilson): {low:.3f}-{high:.3f}" in result.stdout
    assert (
        f"expected calibration error: {written['calibration']['ece']:.4f} (15 equal-width confidence bins)"
        in result.stdout
    )
    row = written["per_class"]["ant"]
    assert re.search(
        rf"^  ant  {row['accuracy']:.3f}  {row['ci95'][0]:.3f}-{row['ci95'][1]:.3f}  \({row['count']} images\)$",
        result.stdout,
        re.M,
    )
    assert f"wrote {out}, {out.parent / 'eval-reliability.png'}, {out.parent / 'eval-mistakes.png'}" in result.stdout


def test_evaluate_on_an_image_folder_names_the_files_of_its_mistakes(described_run, tmp_path):
    from augzarr.trainer.evaluate import evaluate_on_source, write_reports

    folder = write_image_folder(tmp_path / "photos", {"ant": 4, "bee": 4, "cow": 4}, size=8, seed=7)
    out = tmp_path / "folder.json"
    metrics, mistake_images = evaluate_on_source(
        described_run, folder, 256
    )  # evaluate --source --json, in this process
    write_reports(metrics, out, mistake_images)
    written = json.loads(out.read_text())
    assert written["confidently_wrong"]  # a model of one epoch errs on unseen images
    for m in written["confidently_wrong"]:
        assert Path(m["file"]).parent.name == m["true"] and Path(m["file"]).is_file()
    assert all(200 <= side <= 4000 for side in png_size(tmp_path / "folder-mistakes.png"))


def test_a_resumed_run_keeps_its_intended_use_unless_given_again(small_store, tmp_path):
    from augzarr.trainer.training import train_run

    run_dir = tmp_path / "run"
    options = {"store": str(small_store), "epochs": 1, "batch_size": 16, "model": "shallow"}
    quiet = dict(verbose=0, say=lambda _: None)

    def stopped_before_its_reports() -> None:
        run = json.loads((run_dir / "run.json").read_text())
        (run_dir / "run.json").write_text(json.dumps({**run, "status": "running"}))

    def intended_use() -> str:
        return (
            (run_dir / "model_card.md")
            .read_text()
            .split("## Intended use and out-of-scope uses\n", 1)[1]
            .split("\n## ", 1)[0]
            .strip()
        )

    train_run(options, out=run_dir, intended_use="  Demo only.  ", **quiet)
    assert (
        intended_use() == "> Demo only."
        and json.loads((run_dir / "run.json").read_text())["intended_use"] == "Demo only."
    )
    stopped_before_its_reports()
    train_run({}, out=run_dir, resume=True, **quiet)
    assert intended_use() == "> Demo only."
    stopped_before_its_reports()
    train_run({}, out=run_dir, resume=True, intended_use="Demo and teaching.", **quiet)
    assert intended_use() == "> Demo and teaching."
