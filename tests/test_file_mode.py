"""Stage 1, file mode: alerts, quarantine, the report and the ``detect`` command."""

from __future__ import annotations

import gzip
import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bankcourse import cli, dataio, file_mode, generator, rules, schema
from bankcourse.meter import BatchMetrics
from bankcourse.settings import Settings

ROWS = 20_000


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("file_mode_data")


@pytest.fixture(scope="module")
def dataset(data_dir: Path) -> Path:
    """A generated csv.gz of 20,000 transactions."""
    return generator.write_dataset(data_dir / "txns.csv.gz", ROWS, seed=11)


@pytest.fixture(scope="module")
def expected(dataset: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The dataset read in one piece and evaluated directly: (valid rows, flags)."""
    raw = pd.concat(list(dataio.iter_frames(dataset, chunk_rows=ROWS)))
    valid, quarantined = schema.clean_frame(raw)
    assert quarantined.empty
    return valid, rules.evaluate_frame(valid)


@pytest.fixture(scope="module")
def bad_dataset(dataset: Path, data_dir: Path) -> Path:
    """The first 300 rows of ``dataset`` with three malformed rows written into the csv."""
    with gzip.open(dataset, "rt", encoding="utf-8") as handle:
        lines = [next(handle) for _ in range(301)]
    header = lines[0].rstrip("\n").split(",")
    col = {name.strip('"'): i for i, name in enumerate(header)}

    def spoil(line_no: int, column: str, value: str) -> None:
        fields = lines[line_no].rstrip("\n").split(",")
        fields[col[column]] = value
        lines[line_no] = ",".join(fields) + "\n"

    spoil(10, "amount", "lots")        # txn T0000000010
    spoil(20, "type", "WIRE")          # txn T0000000020
    spoil(30, "amount", "-250.00")     # txn T0000000030
    path = data_dir / "bad.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(lines)
    return path


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture(scope="module")
def run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> file_mode.FileModeReport:
    """File mode on the dataset in chunks of 7,000 rows (three chunks)."""
    out = tmp_path_factory.mktemp("file_mode_out")
    return file_mode.run_file_mode(dataset, Settings(), out, chunk_rows=7000)


def test_alerts_are_those_of_a_direct_rule_evaluation(
    run: file_mode.FileModeReport, expected: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    valid, flags = expected
    direct = rules.alerts_frame(valid, flags)
    written = read_jsonl(run.alerts_path)

    assert len(direct) > 0
    assert [a["txn_id"] for a in written] == direct["txn_id"].tolist()
    assert [a["rules"] for a in written] == direct["rules"].tolist()
    assert [a["severity"] for a in written] == direct["severity"].tolist()
    assert [a["amount"] for a in written] == direct["amount"].tolist()
    assert [a["account"] for a in written] == direct["account"].tolist()
    assert [a["step"] for a in written] == direct["step"].tolist()
    times = pd.to_datetime([a["event_time"] for a in written], utc=True, format="ISO8601")
    assert (times == pd.DatetimeIndex(direct["event_time"])).all()


def test_every_alert_line_is_a_json_object_with_the_alert_fields(
    run: file_mode.FileModeReport,
) -> None:
    written = read_jsonl(run.alerts_path)
    assert all(tuple(a) == rules.ALERT_FIELDS for a in written)
    assert all(isinstance(a["amount"], float) for a in written)
    assert all(a["event_time"].endswith("Z") for a in written)
    assert {a["severity"] for a in written} <= {"HIGH", "CRITICAL"}


def test_the_report_counts_add_up(
    run: file_mode.FileModeReport, expected: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    valid, flags = expected
    fraud = valid["isFraud"].to_numpy() == 1
    r = run

    assert r.rows_read == ROWS == r.valid + r.quarantined
    assert r.batches == 3
    assert r.by_rule == {name: int(flags[name].sum()) for name in rules.RULE_NAMES}
    assert r.alerts == int(flags.any(axis=1).sum()) == len(read_jsonl(r.alerts_path))
    assert sum(r.by_severity.values()) == r.alerts
    assert sum(r.alerts_by_type.values()) == r.alerts
    assert sum(r.rows_by_type.values()) == r.valid
    assert r.fraud == int(fraud.sum()) > 0
    assert r.caught + r.missed == r.fraud
    assert r.caught_behavioural + r.missed_behavioural == r.fraud
    behavioural = flags[list(file_mode.BEHAVIOURAL_RULES)].any(axis=1).to_numpy()
    assert r.caught_behavioural == int((behavioural & fraud).sum())
    assert r.rows_per_s > 0 and len(r.batch_rows_per_s) == 3


def test_the_report_reads_as_text_markdown_and_a_dict(run: file_mode.FileModeReport) -> None:
    text, markdown, data = str(run), run.to_markdown(), run.to_dict()
    assert f"{run.rows_read:,}" in text and "BALANCE_DRAIN" in text
    assert "| HIGH_AMOUNT |" in markdown
    assert data["alerts"] == run.alerts and data["source"] == str(run.source)
    json.dumps(data)  # JSON-ready
    assert "rows_read=20000" in repr(run)


def test_precision_and_recall_per_rule_follow_their_definitions() -> None:
    frame = pd.DataFrame({
        "A": [True, True, False, False, True],
        "B": [False, False, False, False, False],
    })
    is_fraud = pd.Series([1, 0, 1, 0, 1])
    table = file_mode.quality_table(file_mode.confusion_counts(frame, is_fraud))

    assert table.loc["A", "precision"] == pytest.approx(2 / 3)
    assert table.loc["A", "recall"] == pytest.approx(2 / 3)
    assert table.loc["A", "false_positives"] == 1
    assert np.isnan(table.loc["B", "precision"])  # never fired
    assert table.loc["B", "recall"] == 0.0


def test_rule_quality_on_a_frame_has_a_row_per_rule(
    expected: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    valid, _ = expected
    table = file_mode.rule_quality(valid)
    assert list(table.index) == [*rules.RULE_NAMES, file_mode.ANY_RULE, file_mode.ANY_BEHAVIOURAL]
    assert table.loc["DATASET_FRAUD", "precision"] == 1.0
    assert table.loc["DATASET_FRAUD", "recall"] == 1.0


def test_malformed_rows_are_quarantined_with_a_reason_and_the_rest_still_alerted(
    bad_dataset: Path, tmp_path: Path
) -> None:
    report = file_mode.run_file_mode(bad_dataset, Settings(), tmp_path, chunk_rows=100)
    quarantined = read_jsonl(report.quarantine_path)

    reasons = {q["txn_id"]: q[schema.REASON_COLUMN] for q in quarantined}
    assert reasons == {
        "T0000000010": "amount: not a number",
        "T0000000020": "type: unknown value",
        "T0000000030": "amount: negative",
    }
    originals = {q["txn_id"]: q for q in quarantined}
    assert originals["T0000000010"]["amount"] == "lots"
    assert originals["T0000000020"]["type"] == "WIRE"
    assert originals["T0000000010"][file_mode.ROW_COLUMN] == 9
    assert report.rows_read == 300 and report.valid == 297 and report.quarantined == 3
    assert report.quarantine_reasons == {"amount: not a number": 1, "type: unknown value": 1,
                                         "amount: negative": 1}

    good = generator.generate_frame(300, seed=11, total_rows=ROWS)
    good = good[~good["txn_id"].isin(list(reasons))]
    direct = rules.alerts_frame(good, rules.evaluate_frame(good))
    written = read_jsonl(report.alerts_path)
    assert [a["txn_id"] for a in written] == direct["txn_id"].tolist()
    assert [a["rules"] for a in written] == direct["rules"].tolist()


def test_chunk_size_and_reading_ahead_do_not_change_the_results(
    dataset: Path, run: file_mode.FileModeReport, tmp_path: Path
) -> None:
    whole = file_mode.run_file_mode(dataset, Settings(), tmp_path, chunk_rows=ROWS,
                                    read_ahead=False)

    assert whole.batches == 1
    assert whole.alerts_path.read_bytes() == run.alerts_path.read_bytes()
    for name in ("alerts", "by_rule", "by_severity", "alerts_by_type", "fraud", "caught",
                 "caught_behavioural", "confusion"):
        assert getattr(whole, name) == getattr(run, name), name


def test_a_lower_high_amount_threshold_raises_more_high_amount_alerts(
    dataset: Path, run: file_mode.FileModeReport, tmp_path: Path,
    expected: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    valid, _ = expected
    settings = Settings().replace(high_amount=50_000)
    lower = file_mode.run_file_mode(dataset, settings, tmp_path)

    assert lower.thresholds["high_amount"] == 50_000
    assert lower.by_rule["HIGH_AMOUNT"] == int((valid["amount"] > 50_000).sum())
    assert lower.by_rule["HIGH_AMOUNT"] > run.by_rule["HIGH_AMOUNT"]
    assert lower.by_rule["BALANCE_DRAIN"] == run.by_rule["BALANCE_DRAIN"]


def test_parquet_gives_the_same_alerts_as_csv(
    data_dir: Path, run: file_mode.FileModeReport, tmp_path: Path
) -> None:
    parquet = generator.write_dataset(data_dir / "txns.parquet", ROWS, seed=11)
    report = file_mode.run_file_mode(parquet, Settings(), tmp_path)
    assert report.alerts_path.read_bytes() == run.alerts_path.read_bytes()


def test_on_batch_receives_the_metrics_of_every_chunk(dataset: Path, tmp_path: Path) -> None:
    seen: list[BatchMetrics] = []
    report = file_mode.run_file_mode(dataset, Settings(), tmp_path, chunk_rows=5000,
                                     on_batch=seen.append)

    assert [m.batch for m in seen] == [1, 2, 3, 4]
    assert [m.total_rows for m in seen] == [5000, 10000, 15000, 20000]
    assert sum(m.alerts for m in seen) == report.alerts
    assert all(m.stage == "file" and m.rows_per_s > 0 for m in seen)
    assert all(tuple(a) == rules.ALERT_FIELDS for m in seen for a in m.latest_alerts)


def test_a_missing_column_is_named_in_the_error(dataset: Path, tmp_path: Path) -> None:
    frame = pd.concat(list(dataio.iter_frames(dataset))).head(50)
    path = tmp_path / "no_balance.csv"
    frame.drop(columns=["newbalanceOrig"]).to_csv(path, index=False)

    with pytest.raises(schema.SchemaError, match="newbalanceOrig"):
        file_mode.run_file_mode(path, Settings(), tmp_path / "out")


def test_a_missing_file_says_how_to_generate_one(tmp_path: Path) -> None:
    with pytest.raises(file_mode.DatasetNotFoundError, match="python -m bankcourse generate"):
        file_mode.run_file_mode(tmp_path / "nothing.csv.gz", Settings(), tmp_path)


def test_alert_text_with_quotes_and_whole_amounts_stays_valid_json() -> None:
    frame = generator.generate_frame(3, seed=5)
    frame["txn_id"] = ['T"quoted"', "T\\back", "T\tab"]
    frame["amount"] = [300_000.0, 1e20, 250_000.5]
    flags = rules.evaluate_frame(frame)
    lines = file_mode.alerts_jsonl(frame, flags).decode().splitlines()
    alerts = [json.loads(line) for line in lines]

    assert [a["txn_id"] for a in alerts] == ['T"quoted"', "T\\back", "T\tab"]
    assert [a["amount"] for a in alerts] == [300_000.0, 1e20, 250_000.5]
    assert all(isinstance(a["amount"], float) for a in alerts)


def test_detect_help_lists_the_threshold_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["detect", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--high-amount", "--transfer-spike", "--drain-balance", "--chunk-rows"):
        assert option in out


def test_detect_with_a_bad_threshold_exits_with_code_2_and_says_why(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["detect", str(dataset), "--out", str(tmp_path), "--high-amount", "lots"])
    err = capsys.readouterr().err
    assert code == 2
    assert "high_amount must be a number" in err
    assert "Traceback" not in err


def test_detect_with_an_unknown_file_suffix_exits_with_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "transactions.txt"
    path.write_text("txn_id\n", encoding="utf-8")
    assert cli.main(["detect", str(path)]) == 2
    assert ".csv.gz" in capsys.readouterr().err


def test_detect_with_a_missing_file_exits_with_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["detect", str(tmp_path / "absent.csv.gz")])
    assert code == 2
    assert "python -m bankcourse generate" in capsys.readouterr().err


def test_detect_prints_the_report_and_writes_the_alerts(
    dataset: Path, run: file_mode.FileModeReport, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cli.main(["-q", "detect", str(dataset), "--out", str(tmp_path),
                     "--transfer-spike", "150000"])
    out = capsys.readouterr().out
    assert code == 0
    assert "rows read" in out and f"{run.alerts:,}" in out
    assert (tmp_path / file_mode.ALERTS_FILE).read_bytes() == run.alerts_path.read_bytes()


def test_a_file_with_only_a_header_gives_an_empty_report(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text(",".join(schema.NAMES) + "\n", encoding="utf-8")
    report = file_mode.run_file_mode(path, Settings(), tmp_path / "out")

    assert (report.rows_read, report.alerts, report.batches) == (0, 0, 0)
    assert report.alerts_path.read_bytes() == b""
    assert "rows read" in str(report)


def test_an_error_while_reading_is_raised_and_the_reader_thread_ends(
    expected: tuple[pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    valid, _ = expected

    def frames():
        yield valid.head(100)
        raise OSError("disk unplugged")

    with pytest.raises(OSError, match="disk unplugged"):
        file_mode.run_file_mode("stream", Settings(), tmp_path, frames=frames())
    assert not [t for t in threading.enumerate() if t.name == "bankcourse-file-reader"]
    assert len(read_jsonl(tmp_path / file_mode.ALERTS_FILE)) == int(
        rules.evaluate_frame(valid.head(100)).any(axis=1).sum())


def test_the_fast_alert_writer_agrees_with_pandas_to_json(
    expected: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    valid, flags = expected
    fast = file_mode.alerts_jsonl(valid, flags).decode().splitlines()
    slow = rules.alerts_frame(valid, flags).to_json(
        orient="records", lines=True, date_format="iso", date_unit="us").splitlines()

    assert len(fast) == len(slow) > 0
    assert [json.loads(line) for line in fast] == [json.loads(line) for line in slow]
