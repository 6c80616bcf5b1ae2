"""Dataset files: round trips of every format, malformed input, missing columns, caching."""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from bankcourse import dataio, generator, schema
from bankcourse.settings import Settings

ROWS = 5_000


def _read_all(path: Path, chunk_rows: int = 200_000) -> pd.DataFrame:
    return pd.concat(list(dataio.iter_frames(path, chunk_rows)), ignore_index=True)


@pytest.mark.parametrize("suffix", [".csv.gz", ".csv", ".parquet", ".jsonl"])
def test_every_format_round_trips_to_the_same_rows_with_nothing_quarantined(
        tmp_path: Path, suffix: str) -> None:
    path = generator.write_dataset(tmp_path / f"data{suffix}", ROWS, seed=11, chunk_rows=1_700)
    frames = list(dataio.iter_frames(path, chunk_rows=1_200))
    assert [len(f) for f in frames] == [1_200] * 4 + [200]
    valid, quarantined = schema.clean_frame(pd.concat(frames))
    assert len(quarantined) == 0
    pd.testing.assert_frame_equal(valid, generator.generate_frame(ROWS, seed=11))


def test_csv_has_a_plain_header_and_iso_event_times(tmp_path: Path) -> None:
    path = generator.write_dataset(tmp_path / "data.csv", 10)
    header, first = path.read_text().splitlines()[:2]
    assert header == ",".join(schema.NAMES)
    assert first.startswith("T0000000001,1,")
    assert first.endswith("Z") and "2026-01-01T00:" in first


def test_json_lines_carry_numbers_as_numbers_and_event_time_as_text_with_z(
        tmp_path: Path) -> None:
    path = generator.write_dataset(tmp_path / "data.jsonl", 50)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 50
    first = records[0]
    assert list(first) == list(schema.NAMES)
    assert isinstance(first["amount"], float) and isinstance(first["step"], int)
    assert isinstance(first["isFraud"], int)
    assert first["event_time"].endswith("Z")
    for record in records:
        cleaned, reason = schema.clean_record(record)
        assert reason is None and cleaned is not None


def test_json_numbers_are_written_in_their_shortest_form(tmp_path: Path) -> None:
    text = generator.write_dataset(tmp_path / "data.jsonl", 2_000).read_text()
    assert re.search(r'":-?\d+\.\d{3,}[,}]', text) is None  # cents, never 945860.1800000001


def test_event_time_text_agrees_with_the_schema_format_including_missing_values() -> None:
    times = pd.Series(pd.to_datetime(
        ["2026-01-01T00:00:00Z", None, "2026-01-31T23:59:59.999999Z", "1999-12-31T12:30:05.5Z",
         "2026-02-01T00:00:00.000001Z"], utc=True, format="ISO8601")).astype(
        "datetime64[us, UTC]")
    text = dataio.event_time_text(pa.array(times)).to_pylist()
    assert text[1] is None
    for value, formatted in zip(times, text, strict=True):
        if formatted is not None:
            assert formatted == schema.format_event_time(value)
    assert text[0] == "2026-01-01T00:00:00.000000Z"


def _corrupt_csv(tmp_path: Path) -> Path:
    """A csv.gz with a text amount, an unknown type, a negative amount, a broken
    timestamp and a line with too few fields, among 400 good rows."""
    clean = generator.write_dataset(tmp_path / "clean.csv", 400, seed=8)
    lines = clean.read_text().splitlines()
    amount = schema.NAMES.index("amount")

    def change(line_no: int, column: int, value: str) -> None:
        fields = lines[line_no].split(",")
        fields[column] = value
        lines[line_no] = ",".join(fields)

    change(10, amount, "lots")
    change(20, schema.NAMES.index("type"), "STEAL")
    change(300, amount, "-5.00")
    change(350, schema.NAMES.index("event_time"), "yesterday")
    lines[380] = "T9999999999,12"
    path = tmp_path / "corrupt.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def test_a_malformed_csv_is_read_without_crashing_and_its_bad_rows_quarantined(
        tmp_path: Path) -> None:
    raw = _read_all(_corrupt_csv(tmp_path), chunk_rows=150)
    assert len(raw) == 400
    valid, quarantined = schema.clean_frame(raw)
    assert len(valid) == 395
    reasons = dict(zip(quarantined["txn_id"], quarantined[schema.REASON_COLUMN], strict=True))
    assert reasons["T0000000010"] == "amount: not a number"
    assert reasons["T0000000020"] == "type: unknown value"
    assert reasons["T0000000300"] == "amount: negative"
    assert reasons["T0000000350"] == "event_time: not a timestamp"
    assert any(txn.startswith("T9999999999,12") for txn in reasons)


def test_a_malformed_jsonl_is_read_without_crashing_and_its_bad_rows_quarantined(
        tmp_path: Path) -> None:
    clean = generator.write_dataset(tmp_path / "clean.jsonl", 300, seed=8)
    records = [json.loads(line) for line in clean.read_text().splitlines()]
    records[5]["amount"] = "lots"
    records[9]["type"] = "STEAL"
    lines = [json.dumps(r) for r in records]
    lines[200] = "{not json"
    path = tmp_path / "corrupt.jsonl"
    path.write_text("\n".join(lines) + "\n")
    raw = _read_all(path, chunk_rows=100)
    assert len(raw) == 300
    valid, quarantined = schema.clean_frame(raw)
    assert len(valid) == 297
    reasons = dict(zip(quarantined["txn_id"], quarantined[schema.REASON_COLUMN], strict=True))
    assert reasons["T0000000006"] == "amount: not a number"
    assert reasons["T0000000010"] == "type: unknown value"
    assert "{not json" in reasons


@pytest.mark.parametrize("suffix", [".csv.gz", ".parquet", ".jsonl"])
def test_a_missing_column_raises_schema_error_naming_it_and_the_file(
        tmp_path: Path, suffix: str) -> None:
    frame = generator.generate_frame(20).drop(columns=["amount"])
    path = tmp_path / f"no-amount{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, date_format="iso")
    else:
        frame.to_csv(path, index=False)
    with pytest.raises(schema.SchemaError, match=rf"no-amount{suffix}.*missing.*amount"):
        list(dataio.iter_frames(path))


def test_a_missing_file_says_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="bankcourse generate"):
        list(dataio.iter_frames(tmp_path / "absent.csv.gz"))


@pytest.mark.parametrize("name, fmt", [
    ("a.csv.gz", "csv.gz"), ("A.CSV", "csv"), ("x/y.parquet", "parquet"), ("z.jsonl", "jsonl"),
])
def test_detect_format_reads_the_suffix(name: str, fmt: str) -> None:
    assert dataio.detect_format(name) == fmt


def test_detect_format_refuses_an_unknown_suffix_listing_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"data\.txt.*\.csv\.gz.*\.parquet.*\.jsonl"):
        dataio.detect_format("data.txt")


def test_ensure_dataset_generates_once_then_reuses_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.from_env(data_dir=tmp_path / "data")
    path = dataio.ensure_dataset(settings, rows=3_000, seed=7)
    assert path == tmp_path / "data" / f"paysim-3000-seed7-v{generator.GENERATOR_VERSION}.csv.gz"
    assert len(_read_all(path)) == 3_000
    stamp = os.stat(path).st_mtime_ns

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("ensure_dataset regenerated a cached dataset")

    monkeypatch.setattr(generator, "write_dataset", must_not_run)
    assert dataio.ensure_dataset(settings, rows=3_000, seed=7) == path
    assert os.stat(path).st_mtime_ns == stamp
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_ensure_dataset_keeps_one_file_per_rows_seed_and_format(tmp_path: Path) -> None:
    settings = Settings.from_env(data_dir=tmp_path)
    a = dataio.ensure_dataset(settings, rows=1_000, seed=1)
    b = dataio.ensure_dataset(settings, rows=1_000, seed=2)
    c = dataio.ensure_dataset(settings, rows=1_000, seed=1, fmt="parquet")
    assert len({a, b, c}) == 3
    assert not _read_all(a).equals(_read_all(b))
