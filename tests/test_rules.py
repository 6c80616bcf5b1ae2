"""The four rules: what each one means, and the pandas and per-record engines agreeing.

The Spark engine joins this agreement in ``test_rules_spark.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bankcourse import rules
from bankcourse.rules import RULE_NAMES, RULES, Severity
from bankcourse.settings import Thresholds


def txn(**values: object) -> dict[str, object]:
    """A plain, harmless PAYMENT; keyword arguments change what a test is about."""
    base: dict[str, object] = {
        "txn_id": "T0000000001", "step": 1, "type": "PAYMENT", "amount": 1_000.0,
        "nameOrig": "C1", "oldbalanceOrg": 5_000.0, "newbalanceOrig": 4_000.0,
        "nameDest": "M1", "oldbalanceDest": 0.0, "newbalanceDest": 0.0,
        "isFraud": 0, "isFlaggedFraud": 0, "event_time": "2026-01-01T00:00:00Z",
    }
    base.update(values)
    return base


def fired_on_frame(record: dict[str, object], t: Thresholds | None = None) -> list[str]:
    flags = rules.evaluate_frame(pd.DataFrame([record]), t)
    return [name for name in RULE_NAMES if bool(flags[name].iloc[0])]


def test_the_course_has_exactly_the_four_rules_in_alert_order() -> None:
    assert RULE_NAMES == ("HIGH_AMOUNT", "BALANCE_DRAIN", "TRANSFER_SPIKE", "DATASET_FRAUD")
    assert [r.severity for r in RULES] == [
        Severity.HIGH, Severity.CRITICAL, Severity.HIGH, Severity.CRITICAL]


def test_each_rule_names_the_thresholds_it_reads() -> None:
    assert rules.BY_NAME["HIGH_AMOUNT"].settings == ("high_amount",)
    assert rules.BY_NAME["BALANCE_DRAIN"].settings == ("drain_balance",)
    assert rules.BY_NAME["TRANSFER_SPIKE"].settings == ("transfer_spike",)
    assert rules.BY_NAME["DATASET_FRAUD"].settings == ()


@pytest.mark.parametrize("evaluate", [rules.evaluate_record, fired_on_frame])
class TestEachRule:
    def test_high_amount_fires_only_above_the_threshold(self, evaluate) -> None:
        assert "HIGH_AMOUNT" in evaluate(txn(amount=200_000.01))
        assert "HIGH_AMOUNT" not in evaluate(txn(amount=200_000.0))

    def test_balance_drain_fires_when_a_transfer_empties_the_account(self, evaluate) -> None:
        assert "BALANCE_DRAIN" in evaluate(txn(type="TRANSFER", newbalanceOrig=0.0))
        assert "BALANCE_DRAIN" in evaluate(txn(type="CASH_OUT", newbalanceOrig=0.0))

    def test_balance_drain_ignores_payments_and_accounts_left_with_money(self, evaluate) -> None:
        assert "BALANCE_DRAIN" not in evaluate(txn(type="PAYMENT", newbalanceOrig=0.0))
        assert "BALANCE_DRAIN" not in evaluate(txn(type="TRANSFER", newbalanceOrig=0.01))

    def test_balance_drain_does_not_fire_on_a_missing_balance(self, evaluate) -> None:
        assert "BALANCE_DRAIN" not in evaluate(txn(type="TRANSFER", newbalanceOrig=None))
        assert "BALANCE_DRAIN" not in evaluate(txn(type="TRANSFER", newbalanceOrig=math.nan))

    def test_transfer_spike_needs_a_transfer_above_its_threshold(self, evaluate) -> None:
        assert "TRANSFER_SPIKE" in evaluate(txn(type="TRANSFER", amount=150_001.0))
        assert "TRANSFER_SPIKE" not in evaluate(txn(type="TRANSFER", amount=150_000.0))
        assert "TRANSFER_SPIKE" not in evaluate(txn(type="CASH_OUT", amount=190_000.0))

    def test_dataset_fraud_follows_the_label(self, evaluate) -> None:
        assert evaluate(txn(isFraud=1)) == ["DATASET_FRAUD"]
        assert evaluate(txn(isFraud=0)) == []

    def test_thresholds_change_what_fires(self, evaluate) -> None:
        low = Thresholds(high_amount=500.0, transfer_spike=10.0, drain_balance=100.0)
        record = txn(type="TRANSFER", amount=600.0, newbalanceOrig=50.0)
        assert evaluate(record, low) == ["HIGH_AMOUNT", "BALANCE_DRAIN", "TRANSFER_SPIKE"]
        assert evaluate(record) == []


def test_an_alert_takes_the_highest_severity_of_its_rules() -> None:
    assert rules.severity_of(["HIGH_AMOUNT"]) == "HIGH"
    assert rules.severity_of(["HIGH_AMOUNT", "BALANCE_DRAIN"]) == "CRITICAL"
    assert rules.severity_of([]) is None


def test_alerts_frame_keeps_only_rows_where_a_rule_fired() -> None:
    frame = pd.DataFrame([
        txn(txn_id="A", amount=300_000.0),
        txn(txn_id="B"),
        txn(txn_id="C", type="TRANSFER", amount=160_000.0, newbalanceOrig=0.0, isFraud=1),
    ])
    alerts = rules.alerts_frame(frame, rules.evaluate_frame(frame))
    assert list(alerts.columns) == list(rules.ALERT_FIELDS)
    assert alerts["txn_id"].tolist() == ["A", "C"]
    assert alerts["rules"].tolist() == [
        ["HIGH_AMOUNT"], ["BALANCE_DRAIN", "TRANSFER_SPIKE", "DATASET_FRAUD"]]
    assert alerts["severity"].tolist() == ["HIGH", "CRITICAL"]
    assert alerts["account"].tolist() == ["C1", "C1"]


def test_alert_record_matches_the_alerts_frame_row() -> None:
    record = txn(txn_id="C", type="TRANSFER", amount=160_000.0, newbalanceOrig=0.0)
    frame = pd.DataFrame([record])
    row = rules.alerts_frame(frame, rules.evaluate_frame(frame)).iloc[0].to_dict()
    single = rules.alert_record(record, rules.evaluate_record(record))
    assert single == row


def test_rule_expressions_read_like_their_definitions() -> None:
    assert repr(rules.BY_NAME["HIGH_AMOUNT"].condition) == "amount > high_amount"


def test_an_unknown_threshold_name_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="high_amount"):
        rules.setting("hgh_amount")


# --- the engines agree, on generated records --------------------------------------------

THRESHOLDS = Thresholds()
EDGE_AMOUNTS = [0.0, THRESHOLDS.transfer_spike, THRESHOLDS.high_amount,
                np.nextafter(THRESHOLDS.high_amount, math.inf), 1e12]

numbers = st.one_of(
    st.sampled_from(EDGE_AMOUNTS),
    st.floats(min_value=-1e6, max_value=1e9, allow_nan=False),
    st.just(math.nan),
    st.none(),
)
records = st.fixed_dictionaries({
    "txn_id": st.text(min_size=1, max_size=5),
    "type": st.one_of(st.sampled_from(["TRANSFER", "CASH_OUT", "PAYMENT", "CASH_IN", "DEBIT"]),
                      st.sampled_from(["transfer", "", "WIRE"]), st.none()),
    "amount": numbers,
    "newbalanceOrig": st.one_of(st.just(0.0), numbers),
    "isFraud": st.one_of(st.sampled_from([0, 1]), st.none()),
    "nameOrig": st.just("C1"),
})
thresholds = st.builds(
    Thresholds,
    high_amount=st.sampled_from([0.0, 1.0, 150_000.0, 200_000.0]),
    transfer_spike=st.sampled_from([0.0, 150_000.0]),
    drain_balance=st.sampled_from([0.0, 10.0]),
)


@given(batch=st.lists(records, min_size=1, max_size=40), t=thresholds)
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_pandas_and_per_record_evaluations_agree_on_any_records(batch, t) -> None:
    frame = pd.DataFrame(batch)
    flags = rules.evaluate_frame(frame, t)
    for i, record in enumerate(batch):
        from_frame = [name for name in RULE_NAMES if bool(flags[name].iloc[i])]
        assert rules.evaluate_record(record, t) == from_frame, record


@given(batch=st.lists(records, min_size=1, max_size=20))
@settings(max_examples=50, deadline=None)
def test_the_engines_agree_when_a_column_is_absent(batch) -> None:
    frame = pd.DataFrame(batch).drop(columns=["newbalanceOrig"])
    flags = rules.evaluate_frame(frame)
    assert not flags["BALANCE_DRAIN"].any()
    for i, record in enumerate(batch):
        record = {k: v for k, v in record.items() if k != "newbalanceOrig"}
        assert rules.evaluate_record(record) == [
            n for n in RULE_NAMES if bool(flags[n].iloc[i])]


def test_numbers_written_as_text_count_as_numbers_in_both_engines() -> None:
    batch = [txn(amount="300000"), txn(amount="abc"), txn(amount=None)]
    assert rules.evaluate_frame(pd.DataFrame(batch))["HIGH_AMOUNT"].tolist() == [
        True, False, False]
    assert ["HIGH_AMOUNT" in rules.evaluate_record(r) for r in batch] == [True, False, False]
