"""`dynconv rerun`'s reproduction verdict: the rerun's last value of the ranked metric against the
configuration's confirmed interval over seeds."""

from __future__ import annotations

from dynconv.rerun import reproduction_verdict

INTERVAL = {"metric": "val_acc", "low": 0.60, "high": 0.70, "n": 3}


def test_inside_the_interval_is_reproduced() -> None:
    history = [{"epoch": 1, "val_acc": 0.2}, {"epoch": 2, "val_acc": 0.65}]
    assert reproduction_verdict(INTERVAL, history).startswith("reproduced: val_acc 0.6500")


def test_outside_says_by_how_many_points_and_which_way_it_missed() -> None:
    below = reproduction_verdict(INTERVAL, [{"val_acc": 0.55}])
    above = reproduction_verdict(INTERVAL, [{"val_acc": 0.731}])
    assert below.startswith("outside the interval, by 5.0 points")
    assert above.startswith("outside the interval, by 3.1 points")


def test_a_loss_is_missed_in_its_own_units() -> None:
    interval = {"metric": "val_loss", "low": 1.0, "high": 1.2, "n": 2}
    assert reproduction_verdict(interval, [{"val_loss": 1.5}]).startswith("outside the interval, by 0.3:")


def test_without_a_confirmed_interval_it_says_so() -> None:
    assert "never confirmed over seeds" in reproduction_verdict(None, [{"val_acc": 0.6}])
    unknown = {"metric": "val_acc", "low": None, "high": None, "n": 1}
    assert reproduction_verdict(unknown, [{"val_acc": 0.6}]).startswith("cannot tell")
