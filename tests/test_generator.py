"""The generator: PaySim calibration, determinism, consistent balances, the fraud pattern."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bankcourse import cli, dataio, generator, rules, schema
from bankcourse.settings import Settings

ROWS = 200_000


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """The course-sized dataset (200,000 rows, seed 42)."""
    return generator.generate_frame(ROWS, seed=42)


# --- shape and calibration -------------------------------------------------------------


def test_frame_has_the_schema_columns_in_order_with_the_schema_dtypes(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == list(schema.NAMES)
    expected = {name: pd.Series(dtype=dtype).dtype
                for name, dtype in schema.pandas_dtypes().items()}
    assert frame.dtypes.to_dict() == expected
    assert len(frame) == ROWS


def test_generated_rows_pass_schema_cleaning_untouched(frame: pd.DataFrame) -> None:
    valid, quarantined = schema.clean_frame(frame)
    assert len(quarantined) == 0
    pd.testing.assert_frame_equal(valid, frame)


@pytest.mark.parametrize("txn_type, share", [
    ("CASH_OUT", 0.352), ("PAYMENT", 0.338), ("CASH_IN", 0.220), ("TRANSFER", 0.084),
    ("DEBIT", 0.0065),
])
def test_type_mix_matches_paysim(frame: pd.DataFrame, txn_type: str, share: float) -> None:
    measured = (frame["type"] == txn_type).mean()
    assert measured == pytest.approx(share, abs=max(0.004, share * 0.1))


def test_fraud_rate_is_paysims_and_exact(frame: pd.DataFrame) -> None:
    assert frame["isFraud"].sum() == 2 * generator.fraud_pairs_before(ROWS) == 258
    assert frame["isFraud"].mean() == pytest.approx(0.00129, rel=0.01)


def test_fraud_happens_only_in_transfer_and_cash_out_half_each(frame: pd.DataFrame) -> None:
    by_type = frame.loc[frame["isFraud"] == 1, "type"].value_counts()
    assert set(by_type.index) == {"TRANSFER", "CASH_OUT"}
    assert by_type["TRANSFER"] == by_type["CASH_OUT"]


def test_amount_median_and_upper_quartile_match_paysim(frame: pd.DataFrame) -> None:
    median, upper = frame["amount"].quantile([0.5, 0.75])
    assert median == pytest.approx(74_872, rel=0.05)
    assert upper == pytest.approx(208_721, rel=0.05)


def test_high_amount_rule_fires_on_about_a_quarter_of_traffic(frame: pd.DataFrame) -> None:
    fired = rules.evaluate_frame(frame)["HIGH_AMOUNT"].mean()
    assert 0.22 < fired < 0.29


def test_payments_and_debits_are_small_and_transfers_large(frame: pd.DataFrame) -> None:
    medians = frame.groupby("type")["amount"].median()
    assert medians["PAYMENT"] < 20_000 and medians["DEBIT"] < 20_000
    assert medians["TRANSFER"] > 2 * medians["CASH_OUT"]
    assert frame["amount"].min() > 0


# --- determinism -----------------------------------------------------------------------


def test_same_seed_and_rows_give_the_same_rows() -> None:
    pd.testing.assert_frame_equal(generator.generate_frame(5_000, seed=9),
                                  generator.generate_frame(5_000, seed=9))


def test_chunk_size_never_changes_the_rows() -> None:
    whole = generator.generate_frame(130_000, seed=3)
    for chunk_rows in (33_333, 1_000_000):
        chunks = list(generator.iter_chunks(130_000, seed=3, chunk_rows=chunk_rows))
        assert all(len(c) == chunk_rows for c in chunks[:-1])
        pd.testing.assert_frame_equal(pd.concat(chunks), whole)


def test_a_slice_from_start_row_equals_the_same_rows_of_the_whole_dataset() -> None:
    whole = generator.generate_frame(130_000, seed=4)
    part = generator.generate_frame(30_000, seed=4, start_row=90_000, total_rows=130_000)
    pd.testing.assert_frame_equal(part, whole.iloc[90_000:120_000])


def test_different_seeds_give_different_rows() -> None:
    a = generator.generate_frame(1_000, seed=1)
    b = generator.generate_frame(1_000, seed=2)
    assert (a["amount"] != b["amount"]).mean() > 0.99
    assert (a["nameOrig"] != b["nameOrig"]).mean() > 0.99


def test_rows_are_pinned_to_known_values_for_seed_42() -> None:
    """Guards the random stream: the same seed must give these rows on any machine."""
    rows = generator.generate_frame(3, seed=42)
    assert rows["type"].tolist() == ["TRANSFER", "PAYMENT", "PAYMENT"]
    assert rows["amount"].tolist() == [136534.45, 36170.16, 11862.9]
    assert rows["nameOrig"].tolist() == ["C1541150817", "C1745087538", "C1523716114"]
    assert rows["nameDest"].tolist() == ["C1406780989", "M1427200644", "M1124485133"]
    assert rows["step"].tolist() == [1, 249, 497]
    assert rows["event_time"].iloc[0] == pd.Timestamp("2026-01-01T00:04:10.063785Z")


# The rows of generate_frame(5_000, seed=42) as csv text, for each GENERATOR_VERSION.
SAMPLE_DIGESTS = {1: "af8474ec2f138af12be1a68e2622b773a7bc8bed2ceb97644e93823d6f894856"}


def test_changed_rows_come_with_a_new_generator_version() -> None:
    """Cached datasets are named after GENERATOR_VERSION: changing rows without it is a bug."""
    text = generator.generate_frame(5_000, seed=42).to_csv(index=False)
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert SAMPLE_DIGESTS.get(generator.GENERATOR_VERSION) == digest, (
        "the generator's rows changed: bump generator.GENERATOR_VERSION (so cached datasets "
        f"are regenerated) and record {digest} for it in SAMPLE_DIGESTS"
    )


def test_dataset_file_names_carry_the_generator_version(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.from_env(data_dir=tmp_path)
    now = dataio.dataset_path(settings, rows=1_000, seed=3)
    assert now.name == f"paysim-1000-seed3-v{generator.GENERATOR_VERSION}.csv.gz"
    monkeypatch.setattr(generator, "GENERATOR_VERSION", generator.GENERATOR_VERSION + 1)
    assert dataio.dataset_path(settings, rows=1_000, seed=3) != now


def test_negative_rows_or_seed_are_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="rows must be"):
        generator.generate_frame(-1)
    with pytest.raises(ValueError, match="seed must be"):
        generator.generate_frame(10, seed=-3)


# --- consistency -----------------------------------------------------------------------


def test_txn_ids_are_unique_and_numbered_in_order(frame: pd.DataFrame) -> None:
    assert frame["txn_id"].is_unique
    assert frame["txn_id"].iloc[-1] == f"T{ROWS:010d}"
    assert frame["txn_id"].str.fullmatch(r"T\d{10}").all()


def test_debits_take_money_out_floored_at_zero(frame: pd.DataFrame) -> None:
    debit = frame[frame["type"].isin(schema.DEBIT_TYPES)]
    expected = np.maximum(debit["oldbalanceOrg"] - debit["amount"], 0)
    np.testing.assert_allclose(debit["newbalanceOrig"], expected, atol=0.006)
    assert (debit["newbalanceOrig"] == 0).any()


def test_cash_in_adds_to_the_origin_and_takes_from_the_destination(frame: pd.DataFrame) -> None:
    cash_in = frame[frame["type"] == "CASH_IN"]
    np.testing.assert_allclose(cash_in["newbalanceOrig"],
                               cash_in["oldbalanceOrg"] + cash_in["amount"], atol=0.006)
    np.testing.assert_allclose(cash_in["newbalanceDest"],
                               np.maximum(cash_in["oldbalanceDest"] - cash_in["amount"], 0),
                               atol=0.006)


def test_customer_destinations_of_debits_receive_the_amount(frame: pd.DataFrame) -> None:
    moved = frame[frame["type"].isin(["TRANSFER", "CASH_OUT", "DEBIT"])]
    np.testing.assert_allclose(moved["newbalanceDest"],
                               moved["oldbalanceDest"] + moved["amount"], atol=0.006)


def test_payments_go_to_merchants_whose_balances_are_zero(frame: pd.DataFrame) -> None:
    payments = frame[frame["type"] == "PAYMENT"]
    assert payments["nameDest"].str.startswith("M").all()
    assert (payments[["oldbalanceDest", "newbalanceDest"]] == 0).all().all()
    others = frame[frame["type"] != "PAYMENT"]
    assert others["nameDest"].str.startswith("C").all()
    assert frame["nameOrig"].str.fullmatch(r"C\d{10}").all()


def test_each_fraud_transfer_empties_the_victim_into_a_mule_who_cashes_it_out(
        frame: pd.DataFrame) -> None:
    fraud = frame.index[frame["isFraud"] == 1]
    transfers = frame.loc[fraud[frame.loc[fraud, "type"] == "TRANSFER"]]
    assert len(transfers) == 129
    for i, transfer in transfers.iterrows():
        cash_out = frame.loc[i + 1]
        assert transfer["newbalanceOrig"] == 0
        assert transfer["amount"] == transfer["oldbalanceOrg"] > 0
        assert cash_out["type"] == "CASH_OUT" and cash_out["isFraud"] == 1
        assert cash_out["nameOrig"] == transfer["nameDest"]
        assert cash_out["amount"] == transfer["amount"]
        assert cash_out["step"] == transfer["step"]
        assert cash_out["newbalanceOrig"] == 0


def test_balance_drain_fires_on_every_fraud_row(frame: pd.DataFrame) -> None:
    flags = rules.evaluate_frame(frame[frame["isFraud"] == 1])
    assert flags["BALANCE_DRAIN"].all()


def test_is_flagged_fraud_marks_exactly_transfers_over_200000(frame: pd.DataFrame) -> None:
    expected = (frame["type"] == "TRANSFER") & (frame["amount"] > 200_000)
    assert (frame["isFlaggedFraud"] == expected.astype("int8")).all()
    assert expected.sum() > 1_000


def test_steps_run_from_1_to_744_in_row_order(frame: pd.DataFrame) -> None:
    steps = frame["step"].to_numpy()
    assert steps[0] == 1 and steps[-1] == 744
    assert (np.diff(steps) >= 0).all()
    assert set(np.unique(steps)) == set(range(1, 745))


def test_event_time_never_decreases_and_lies_in_its_steps_hour(frame: pd.DataFrame) -> None:
    times = frame["event_time"]
    assert times.is_monotonic_increasing
    hour_start = generator.START_TIME + pd.to_timedelta(frame["step"] - 1, unit="h")
    offset = times - hour_start
    assert (offset >= pd.Timedelta(0)).all() and (offset < pd.Timedelta(hours=1)).all()
    assert str(times.dt.tz) == "UTC"


# --- writing and the command line -------------------------------------------------------


def test_a_failed_write_leaves_no_file_behind(tmp_path: Path) -> None:
    target = tmp_path / "broken.csv.gz"

    def fail(rows: int) -> None:
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        generator.write_dataset(target, 120_000, chunk_rows=40_000, on_chunk=fail)
    assert list(tmp_path.iterdir()) == []


def test_write_dataset_refuses_an_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.csv\.gz"):
        generator.write_dataset(tmp_path / "data.xlsx", 10)


def test_generate_command_writes_a_readable_file(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "small.parquet"
    code = cli.main(["generate", "--rows", "1500", "--seed", "5", "--out", str(out),
                     "--chunk-rows", "400"])
    assert code == 0
    assert str(out) in capsys.readouterr().out
    read = pd.concat(dataio.iter_frames(out))
    valid, _ = schema.clean_frame(read)
    pd.testing.assert_frame_equal(valid, generator.generate_frame(1500, seed=5))


def test_generate_help_explains_each_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = capsys.readouterr().out
    for option in ("--rows", "--seed", "--format", "--out", "--chunk-rows"):
        assert option in text
    assert "default: 200000" in text
