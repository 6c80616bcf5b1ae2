"""The one schema: its engine forms, and malformed rows set aside with a reason."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from bankcourse import schema
from bankcourse.schema import NAMES, REASON_COLUMN, SchemaError


def row(**values: object) -> dict[str, object]:
    base: dict[str, object] = {
        "txn_id": "T0000000001", "step": 3, "type": "TRANSFER", "amount": 1_000.0,
        "nameOrig": "C1", "oldbalanceOrg": 1_000.0, "newbalanceOrig": 0.0,
        "nameDest": "C2", "oldbalanceDest": 0.0, "newbalanceDest": 1_000.0,
        "isFraud": 0, "isFlaggedFraud": 0, "event_time": "2026-01-01T02:10:00Z",
    }
    base.update(values)
    return base


def test_every_engine_form_lists_the_same_columns_in_the_same_order() -> None:
    assert schema.arrow_schema().names == list(NAMES)
    assert list(schema.pandas_dtypes()) == list(NAMES)
    assert [part.split(" ")[0].strip("`") for part in schema.spark_ddl().split(", ")] == list(
        NAMES)


def test_a_missing_column_error_lists_every_missing_column_and_the_fix() -> None:
    with pytest.raises(SchemaError) as err:
        schema.require_columns([n for n in NAMES if n not in ("amount", "isFraud")], "x.csv")
    message = str(err.value)
    assert "x.csv" in message and "amount, isFraud" in message
    assert "python -m bankcourse generate" in message


def test_a_valid_record_is_returned_with_typed_numbers() -> None:
    record, reason = schema.clean_record(row(step="3", amount="1000.5", isFraud="1"))
    assert reason is None
    assert record["step"] == 3 and record["amount"] == 1000.5 and record["isFraud"] == 1


def test_a_missing_balance_is_allowed_but_kept_as_missing() -> None:
    record, reason = schema.clean_record(row(newbalanceOrig=None))
    assert reason is None and math.isnan(record["newbalanceOrig"])


@pytest.mark.parametrize(("change", "reason"), [
    ({"amount": "abc"}, "amount: not a number"),
    ({"amount": -5}, "amount: negative"),
    ({"amount": None}, "amount: missing"),
    ({"type": "WIRE"}, "type: unknown value"),
    ({"step": 0}, "step: not a whole number >= 1"),
    ({"isFraud": 2}, "isFraud: must be 0 or 1"),
    ({"oldbalanceOrg": "lots"}, "oldbalanceOrg: not a number"),
    ({"event_time": "yesterday"}, "event_time: not a timestamp"),
    ({"txn_id": ""}, "txn_id: missing"),
    ({"amount": True}, "amount: not a number"),
])
def test_a_malformed_record_is_refused_with_its_reason(change, reason) -> None:
    assert schema.clean_record(row(**change)) == (None, reason)


def test_a_record_without_fields_names_them() -> None:
    raw = row()
    del raw["amount"], raw["type"]
    assert schema.clean_record(raw) == (None, "missing field(s): type, amount")
    assert schema.clean_record([1, 2]) == (None, "not a JSON object (got list)")


def test_clean_frame_keeps_good_rows_typed_and_quarantines_bad_ones_with_reasons() -> None:
    raw = pd.DataFrame([
        row(txn_id="A"),
        row(txn_id="B", amount="abc"),
        row(txn_id="C", type="WIRE"),
        row(txn_id="D", amount=-1),
        row(txn_id="E", newbalanceOrig=None),
    ]).astype({"amount": "object"})
    valid, bad = schema.clean_frame(raw)
    assert valid["txn_id"].tolist() == ["A", "E"]
    assert str(valid["amount"].dtype) == "float64"
    assert str(valid["step"].dtype) == "int32"
    assert isinstance(valid["event_time"].dtype, pd.DatetimeTZDtype)
    assert dict(zip(bad["txn_id"], bad[REASON_COLUMN], strict=True)) == {
        "B": "amount: not a number", "C": "type: unknown value", "D": "amount: negative"}
    assert bad.loc[bad["txn_id"] == "B", "amount"].item() == "abc"


def test_clean_frame_and_clean_record_give_the_same_reasons() -> None:
    cases = [row(amount="abc"), row(type="WIRE"), row(amount=-1), row(step=0),
             row(isFraud=3), row(event_time="soon"), row(), row(oldbalanceDest="?")]
    _, bad = schema.clean_frame(pd.DataFrame(cases).astype("object"))
    from_frame = dict(zip(bad.index, bad[REASON_COLUMN], strict=True))
    for i, case in enumerate(cases):
        assert from_frame.get(i) == schema.clean_record(case)[1], case


def test_clean_frame_of_a_clean_frame_quarantines_nothing() -> None:
    valid, bad = schema.clean_frame(pd.DataFrame([row(txn_id=str(i)) for i in range(5)]))
    assert len(valid) == 5 and bad.empty and REASON_COLUMN in bad.columns


def test_event_time_is_written_as_utc_text_with_a_z() -> None:
    assert schema.format_event_time(pd.Timestamp("2026-01-01 05:00", tz="Europe/Paris")) == (
        "2026-01-01T04:00:00.000000Z")
