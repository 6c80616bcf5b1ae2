"""The dashboard's sums, its throughput window, its redraw pacing and its final figure."""

from __future__ import annotations

import pytest

from bankcourse import dashboard, meter, rules
from bankcourse.dashboard import Dashboard, DashboardState


class FakeClock:
    """A clock the test moves by hand (a parameter of the dashboard, not a patched part)."""

    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def batch(n: int, rows: int = 1000, seconds: float = 0.5, fraud: int = 2,
          stage: str = "file") -> meter.BatchMetrics:
    """Batch number ``n`` with a few alerts, one of them critical."""
    alerts = [
        {"txn_id": f"T{n:010d}", "rules": ["HIGH_AMOUNT"], "severity": "HIGH",
         "amount": 250_000.0 + n, "type": "CASH_OUT", "account": f"C{n}", "step": n,
         "event_time": "2026-01-01T00:00:00.123456Z"},
        {"txn_id": f"T{n:010d}9", "rules": ["BALANCE_DRAIN", "DATASET_FRAUD"],
         "severity": "CRITICAL", "amount": 9_000.0, "type": "TRANSFER",
         "account": f"C{n}9", "step": n, "event_time": "2026-01-01T01:00:00Z"},
    ]
    return meter.BatchMetrics(
        stage=stage, batch=n, rows=rows, seconds=seconds, rows_per_s=rows / seconds,
        total_rows=n * rows, alerts=3, fraud=fraud,
        by_type={"CASH_OUT": rows // 2, "PAYMENT": rows - rows // 2},
        by_rule={"HIGH_AMOUNT": 1, "BALANCE_DRAIN": 2, "TRANSFER_SPIKE": 0,
                 "DATASET_FRAUD": fraud},
        latest_alerts=alerts, wall_time=1000.0 + n * seconds,
    )


def test_state_sums_rows_fraud_types_and_rules_over_batches() -> None:
    state = DashboardState()
    for n in range(1, 6):
        state.add(batch(n, rows=1000 * n, fraud=n))
    assert state.batches == 5
    assert state.total_rows == 15_000
    assert state.fraud == 15
    assert state.alerts == 15
    assert state.by_rule == {"HIGH_AMOUNT": 5, "BALANCE_DRAIN": 10, "TRANSFER_SPIKE": 0,
                             "DATASET_FRAUD": 15}
    assert sum(state.by_type.values()) == 15_000
    assert state.fraud_rate == pytest.approx(15 / 15_000)


def test_uptime_runs_from_first_batch_start_to_last_batch_end() -> None:
    state = DashboardState()
    for n in range(1, 5):
        state.add(batch(n, seconds=0.5))
    # first batch started at 1000.5 - 0.5, the last ended at 1002.0
    assert state.uptime_s == pytest.approx(2.0)
    assert state.rows_per_s == pytest.approx(4000 / 2.0)


def test_throughput_line_keeps_only_the_last_forty_batches() -> None:
    state = DashboardState(window=40)
    for n in range(1, 101):
        state.add(batch(n, rows=n, seconds=1.0))
    points = list(state.throughput)
    assert len(points) == 40
    assert points[0] == (61, 61.0)
    assert points[-1] == (100, 100.0)
    assert state.total_rows == sum(range(1, 101))


def test_alert_feed_keeps_the_newest_alerts_first() -> None:
    state = DashboardState(max_alerts=3)
    for n in range(1, 4):
        state.add(batch(n))
    feed = list(state.latest_alerts)
    assert len(feed) == 3
    assert feed[0]["txn_id"] == "T00000000039"
    assert feed[1]["txn_id"] == "T0000000003"


def test_two_detectors_feeding_one_dashboard_add_up() -> None:
    state = DashboardState()
    state.add(batch(1, rows=300, stage="kafka-a"))
    state.add(batch(1, rows=200, stage="kafka-b"))
    assert state.total_rows == 500
    assert state.stages == {"kafka-a": 1, "kafka-b": 1}


def test_live_dashboard_redraws_at_most_once_per_refresh_interval() -> None:
    clock = FakeClock()
    board = Dashboard("t", live=True, refresh_s=0.5, clock=clock)
    for step in range(20):  # 20 batches, 0.1 s apart: 2 s in all
        board.update(batch(step + 1))
        clock.now_s += 0.1
    # redraws at 0.0, 0.5, 1.0, 1.5 s; the other 16 batches are only added up
    assert board.redraws == 4
    assert board.state.batches == 20
    board.close(show=False)


def test_headless_dashboard_draws_nothing_until_close() -> None:
    clock = FakeClock()
    board = Dashboard("t", live=False, clock=clock)
    for n in range(1, 11):
        board.update(batch(n))
        clock.now_s += 1.0
    assert board.redraws == 0
    assert board.state.batches == 10


def test_update_works_as_a_meter_listener() -> None:
    board = Dashboard("t", live=False)
    m = meter.ThroughputMeter("file", log_batches=False).start()
    m.add_listener(board.update)
    for _ in range(3):
        m.record(100, 0.01, alerts=1, fraud=1, by_rule={"DATASET_FRAUD": 1})
    assert board.state.total_rows == 300
    assert board.state.by_rule["DATASET_FRAUD"] == 3


def test_close_produces_a_figure_with_the_four_panels() -> None:
    board = Dashboard("File mode", live=False)
    board.extend(batch(n) for n in range(1, 6))
    fig = board.close(show=False)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == list(dashboard.PANEL_TITLES)
    png = dashboard.figure_png(fig)
    assert png.startswith(b"\x89PNG")
    assert "total processed: 5,000" in fig.get_suptitle()


def test_summary_table_highlights_critical_alerts_only() -> None:
    state = DashboardState()
    state.add(batch(1))
    table = dashboard.alerts_html(state)
    assert table.count("background:#F9D6D2") == 1
    assert "BALANCE_DRAIN, DATASET_FRAUD" in table
    assert all(name in dashboard.summary_html(state) for name in rules.RULE_NAMES)


def test_headless_is_detected_from_the_environment() -> None:
    assert dashboard.headless({"CI": "true"})
    assert dashboard.headless({"BANKCOURSE_HEADLESS": "1"})
    # outside a kernel nobody is watching, whatever the environment says
    assert dashboard.headless({"CI": "0"})
