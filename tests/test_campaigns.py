"""The fast forms of the robustness campaigns (issue #4; python tests/campaign.py runs them whole): seeded kills
of build-aug and train, and the misuse cases. (A file of its own so that the test processes of make test share the
robustness cases.)"""

from __future__ import annotations

import campaign
import misuse


def test_crash_campaign_fast_form(tmp_path):
    """A few seeded kill points of the campaign (python tests/campaign.py runs all 20 + 5)."""
    figures = campaign.main(
        [
            "--build-kills",
            "3",
            "--train-kills",
            "1",
            "--no-corpus",
            "--no-misuse",
            "--seed",
            "1",
            "--work",
            str(tmp_path),
        ]
    )
    assert len(figures["build"]) == 3 and len(figures["train"]) == 1
    for trial in figures["build"]:
        assert trial["resume_exit"] == 0 and trial["byte_identical"], trial
    for trial in figures["train"]:
        assert trial["resume_exit"] == 0 and trial["complete"], trial


def test_misuse_campaign_fast_form(tmp_path):
    """Cases of every misuse kind end in a correct store, a one-line refusal or a documented warning
    (python tests/campaign.py runs them all; each kind is also tested in detail in its own test file)."""
    trials = misuse.run_cases(tmp_path, misuse.fast_selection)
    assert {t["category"] for t in trials} == set(misuse.CATEGORIES)
    assert {t["outcome"] for t in trials} == set(misuse.EXPECTED_OUTCOMES)
    assert [t for t in trials if not t["ok"]] == []
