"""Notebook parameters are checked with clear messages; self-checks judge answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from bankcourse import exercises, generator, rules
from bankcourse.exercises import ParameterError


@pytest.mark.parametrize(("params", "message"), [
    ({"rows": -5}, "rows must be from 10 to 7,000,000"),
    ({"rows": 2.5}, "rows must be a whole number"),
    ({"rows": True}, "rows must be a whole number"),
    ({"seed": "42"}, "seed must be a whole number"),
    ({"high_amount": -1}, "high_amount must be from 0"),
    ({"high_amount": float("nan")}, "high_amount must be a number"),
    ({"rate_per_s": 0}, "rate_per_s must be above 0"),
    ({"duration_s": 10_000}, "duration_s must be above 0 to 900"),
    ({"bootstrap_servers": "localhost"}, "bootstrap_servers must look like"),
    ({"spark_master": "local[two]"}, "spark_master must look like"),
    ({"live_dashboard": "yes"}, "live_dashboard must be True, False or None"),
    ({"rowz": 10}, "unknown parameter(s) rowz"),
])
def test_a_bad_parameter_is_named_with_its_allowed_values(params: dict, message: str) -> None:
    with pytest.raises(ParameterError) as caught:
        exercises.validate_parameters(**params)
    assert message in str(caught.value)


def test_parameter_error_shows_one_line_instead_of_a_traceback() -> None:
    error = ParameterError("rows must be from 10 to 7,000,000, got -5.")
    assert error._render_traceback_() == [f"ParameterError: {error}"]


def test_valid_parameters_build_settings_with_the_thresholds(tmp_path: Path) -> None:
    p = exercises.validate_parameters(rows=1_000, high_amount=100_000, transfer_spike=5,
                                      data_dir=str(tmp_path / "d"),
                                      output_dir=str(tmp_path / "o"),
                                      bootstrap_servers="broker:9092",
                                      spark_master="local[2]")
    assert p.rows == 1_000
    assert p.settings.thresholds.high_amount == 100_000
    assert p.settings.thresholds.transfer_spike == 5
    assert p.settings.data_dir == tmp_path / "d"
    assert p.output_dir.is_dir()
    assert p.settings.bootstrap_servers == "broker:9092"
    assert p.settings.spark_master == "local[2]"


def test_relative_folders_are_taken_from_the_course_root(tmp_path: Path) -> None:
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "bankcourse").mkdir()
    assert exercises.course_root(tmp_path / "notebooks") == tmp_path
    assert exercises.course_root(tmp_path) == tmp_path
    assert exercises.course_path("data", tmp_path) == tmp_path / "data"
    assert exercises.shown_path(tmp_path / "data" / "x.csv", tmp_path) == "data/x.csv"


def test_write_summary_writes_plain_json(tmp_path: Path) -> None:
    import numpy as np

    path = exercises.write_summary(tmp_path, "s", {"n": np.int64(3), "x": float("nan")})
    assert path.read_text().strip() == '{\n  "n": 3,\n  "x": null\n}'


@pytest.fixture(scope="module")
def frame():
    return generator.generate_frame(20_000, seed=7)


def test_fraud_share_check_accepts_the_right_share_and_a_percentage(frame, capsys) -> None:
    fraud = frame[frame["isFraud"] == 1]
    share = (fraud["type"] == "TRANSFER").mean()
    assert exercises.check_fraud_share_of_type(share, frame, "TRANSFER")
    assert exercises.check_fraud_share_of_type(share * 100, frame, "TRANSFER")
    assert not exercises.check_fraud_share_of_type(share + 0.1, frame, "TRANSFER")
    assert "Not yet" in capsys.readouterr().out


def test_a_check_on_the_starter_none_says_not_yet(frame, capsys) -> None:
    verdict = exercises.check_median_amount(None, frame, "CASH_OUT")
    assert not verdict
    assert "Not yet: replace None" in capsys.readouterr().out


def test_precision_check_computes_the_rule_precision(frame) -> None:
    flags = rules.evaluate_frame(frame)
    hit = flags["TRANSFER_SPIKE"]
    right = frame.loc[hit, "isFraud"].mean()
    assert exercises.check_precision(right, frame, "TRANSFER_SPIKE")
    assert not exercises.check_precision(right + 0.01, frame, "TRANSFER_SPIKE")


def test_rule_count_check_uses_the_changed_threshold(frame) -> None:
    at_million = int((frame["amount"] > 1_000_000).sum())
    assert exercises.check_rule_count_at(at_million, frame, "HIGH_AMOUNT", high_amount=1e6)
    assert not exercises.check_rule_count_at(at_million + 1, frame, "HIGH_AMOUNT",
                                             high_amount=1e6)


def test_quarantine_check_counts_the_lines_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "quarantine.jsonl"
    path.write_text('{"reason": "a"}\n{"reason": "b"}\n')
    assert exercises.check_quarantine_count(2, path)
    assert not exercises.check_quarantine_count(3, path)


def test_partition_split_check_reads_the_assignment() -> None:
    owned = {"detector-1": [0], "detector-2": [1]}
    assert exercises.check_partition_split(1, owned)
    assert exercises.check_partition_split({"detector-1": 1, "detector-2": 1}, owned)
    assert not exercises.check_partition_split(2, owned)


def test_ratio_check_allows_five_percent() -> None:
    assert exercises.check_ratio(2.04, 10.0, 5.0, "the speed-up")
    assert not exercises.check_ratio(2.5, 10.0, 5.0, "the speed-up")
