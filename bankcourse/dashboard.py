"""A live dashboard for any stage: stat cards, throughput, type mix, rules and alerts.

Every stage reports one :class:`bankcourse.meter.BatchMetrics` per batch (a file
chunk, a Kafka poll, a Spark micro-batch). :meth:`Dashboard.update` takes them one
at a time, so it can be passed straight to a stage as its ``on_batch`` callback or
added to a :class:`~bankcourse.meter.ThroughputMeter` with ``add_listener``.

Two ways of showing:

* **live** (JupyterLab with a person watching): ipywidgets show the cards, the charts
  and the alert feed, redrawn at most every ``refresh_s`` seconds. Batches arriving
  in between are only added up, so a fast stage is not slowed by drawing; the
  redraw interval also grows when drawing is slow, so drawing takes at most about a
  tenth of the time.
* **static** (papermill, nbval, CI, a script): nothing is drawn while the stage runs.

In both, :meth:`Dashboard.close` leaves a final static picture (a PNG of the four
panels) and an HTML table of the figures and latest alerts in the cell's output,
so an executed notebook shows its results on GitHub too.

Usage::

    board = Dashboard("File mode").show()
    try:
        report = file_mode.run_file_mode(path, settings, out_dir, on_batch=board.update)
    finally:
        board.close()
"""

from __future__ import annotations

import html
import io
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bankcourse import rules, schema

log = logging.getLogger(__name__)

HEADLESS_ENV = ("CI", "PAPERMILL", "NBVAL", "BANKCOURSE_HEADLESS")
"""Environment variables that, when set to anything but ``0``/``false``/empty, mean no
person is watching: the dashboard then draws only once, in :meth:`Dashboard.close`."""

PANEL_TITLES = (
    "Throughput (txn/s per batch)",
    "Transaction types",
    "Alerts per rule",
    "Latest alerts",
)
"""The titles of the four panels of the static figure, in drawing order."""

_TYPE_COLOURS = {
    "CASH_IN": "#4C9F70", "CASH_OUT": "#E07A5F", "DEBIT": "#9A8C98",
    "PAYMENT": "#3D5A80", "TRANSFER": "#F2CC8F",
}
_CRITICAL = "#C0392B"
_HIGH = "#E67E22"


@dataclass
class DashboardState:
    """The running totals behind the dashboard, built from a sequence of batches.

    Args:
        window: how many recent batches the throughput line shows. Default: 40.
        max_alerts: how many latest alerts the feed keeps. Default: 8.

    The totals are sums over every batch received, so two detectors of one consumer
    group can feed the same dashboard.
    """

    window: int = 40
    max_alerts: int = 8
    batches: int = 0
    total_rows: int = 0
    alerts: int = 0
    fraud: int = 0
    busy_s: float = 0.0
    by_type: dict[str, int] = field(default_factory=dict)
    by_rule: dict[str, int] = field(default_factory=lambda: dict.fromkeys(rules.RULE_NAMES, 0))
    stages: dict[str, int] = field(default_factory=dict)
    last_batch: int = 0
    last_rows_per_s: float = 0.0
    lag: int | None = None
    first_wall_s: float | None = None
    last_wall_s: float | None = None

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be at least 1 batch, got {self.window}")
        self.throughput: deque[tuple[int, float]] = deque(maxlen=self.window)
        self.latest_alerts: deque[dict[str, Any]] = deque(maxlen=max(self.max_alerts, 0))

    def add(self, metrics: Any) -> None:
        """Add one batch (a :class:`~bankcourse.meter.BatchMetrics` or any object with its
        fields) to the totals."""
        self.batches += 1
        rows = int(metrics.rows)
        self.total_rows += rows
        self.alerts += int(metrics.alerts)
        self.fraud += int(metrics.fraud)
        self.busy_s += float(metrics.seconds)
        _add(self.by_type, metrics.by_type)
        _add(self.by_rule, metrics.by_rule)
        self.stages[metrics.stage] = self.stages.get(metrics.stage, 0) + 1
        self.last_batch = int(metrics.batch)
        self.last_rows_per_s = float(metrics.rows_per_s)
        self.lag = getattr(metrics, "lag", None)
        wall = float(getattr(metrics, "wall_time", 0.0) or 0.0)
        if self.first_wall_s is None:
            self.first_wall_s = wall - float(metrics.seconds)
        self.last_wall_s = wall
        self.throughput.append((self.batches, float(metrics.rows_per_s)))
        for alert in metrics.latest_alerts or ():
            self.latest_alerts.appendleft(dict(alert))

    @property
    def fraud_rate(self) -> float:
        """Share of the transactions seen that are labelled fraud (0.0 before any)."""
        return self.fraud / self.total_rows if self.total_rows else 0.0

    @property
    def uptime_s(self) -> float:
        """Seconds from the start of the first batch to the end of the last one."""
        if self.first_wall_s is None or self.last_wall_s is None:
            return 0.0
        return max(self.last_wall_s - self.first_wall_s, 0.0)

    @property
    def rows_per_s(self) -> float:
        """Overall transactions per second over the uptime (0.0 before any)."""
        uptime = self.uptime_s
        return self.total_rows / uptime if uptime > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """The figures of the stat cards and charts, as a JSON-ready dict."""
        return {
            "batches": self.batches,
            "total_rows": self.total_rows,
            "alerts": self.alerts,
            "fraud": self.fraud,
            "fraud_rate": self.fraud_rate,
            "uptime_s": self.uptime_s,
            "rows_per_s": self.rows_per_s,
            "last_rows_per_s": self.last_rows_per_s,
            "by_type": dict(self.by_type),
            "by_rule": dict(self.by_rule),
            "stages": dict(self.stages),
            "lag": self.lag,
        }


def _add(into: dict[str, int], counts: Mapping[str, int] | None) -> None:
    for key, value in (counts or {}).items():
        into[key] = into.get(key, 0) + int(value)


def headless(env: Mapping[str, str] | None = None) -> bool:
    """True when no person is watching: outside IPython, or one of :data:`HEADLESS_ENV`
    is set."""
    env = os.environ if env is None else env
    for name in HEADLESS_ENV:
        if env.get(name, "").strip().lower() not in ("", "0", "false", "no"):
            return True
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipykernel
        return True
    shell = get_ipython()
    return shell is None or not hasattr(shell, "kernel")


# --- drawing ---------------------------------------------------------------------------


def draw_figure(
    state: DashboardState, title: str = "", *, width_in: float = 11.0, feed: bool = True
) -> Figure:
    """The four panels for ``state`` as a matplotlib Figure (no pyplot, no display).

    Panels, in :data:`PANEL_TITLES` order: throughput over the last ``window``
    batches, the transaction-type doughnut, alerts per rule, and the latest alerts.
    With ``feed=False`` (the live view, which shows alerts as HTML) only the first
    three are drawn, in one row and with a fixed layout, which renders faster.
    """
    if not feed:
        fig = Figure(figsize=(width_in, width_in * 0.3))
        FigureCanvasAgg(fig)
        fig.subplots_adjust(left=0.06, right=0.97, bottom=0.16, top=0.88, wspace=0.75)
        grid = fig.add_gridspec(1, 3, width_ratios=[2.3, 1.3, 1.3])
        ax_tp = fig.add_subplot(grid[0, 0])
        ax_type = fig.add_subplot(grid[0, 1])
        ax_rule = fig.add_subplot(grid[0, 2])
        ax_feed = None
    else:
        fig = Figure(figsize=(width_in, width_in * 0.62), layout="constrained")
        FigureCanvasAgg(fig)
        grid = fig.add_gridspec(2, 3)
        ax_tp = fig.add_subplot(grid[0, 0:2])
        ax_type = fig.add_subplot(grid[0, 2])
        ax_rule = fig.add_subplot(grid[1, 0])
        ax_feed = fig.add_subplot(grid[1, 1:3])
        fig.suptitle(_cards_line(state, title), fontsize=10.5)

    ax_tp.set_title(PANEL_TITLES[0], fontsize=10)
    if state.throughput:
        xs = [x for x, _ in state.throughput]
        ys = [y for _, y in state.throughput]
        ax_tp.plot(xs, ys, marker="o", markersize=3, color="#3D5A80")
        ax_tp.fill_between(xs, ys, alpha=0.15, color="#3D5A80")
        ax_tp.set_ylim(bottom=0)
    ax_tp.set_xlabel("batch")
    ax_tp.grid(alpha=0.3)

    ax_type.set_title(PANEL_TITLES[1], fontsize=10)
    types = [(k, v) for k, v in sorted(state.by_type.items()) if v]
    if types:
        labels = [k for k, _ in types]
        counts = [v for _, v in types]
        ax_type.pie(
            counts, labels=labels, autopct="%1.1f%%", pctdistance=0.78, startangle=90,
            colors=[_TYPE_COLOURS.get(k, "#BBBBBB") for k in labels],
            wedgeprops={"width": 0.42, "edgecolor": "white"}, textprops={"fontsize": 8},
        )
    else:
        ax_type.text(0.5, 0.5, "no data yet", ha="center", va="center")
    ax_type.set_aspect("equal")
    ax_type.axis("off")

    ax_rule.set_title(PANEL_TITLES[2], fontsize=10)
    names = list(state.by_rule)
    counts = [state.by_rule[n] for n in names]
    colours = [_CRITICAL if rules.BY_NAME.get(n) and
               rules.BY_NAME[n].severity == rules.Severity.CRITICAL else _HIGH for n in names]
    bars = ax_rule.barh(names, counts, color=colours)
    ax_rule.bar_label(bars, labels=[f"{c:,}" for c in counts], fontsize=8, padding=2)
    ax_rule.invert_yaxis()
    ax_rule.tick_params(axis="y", labelsize=8)
    ax_rule.set_xlim(0, max(counts + [1]) * 1.3)

    if ax_feed is None:
        return fig
    ax_feed.set_title(PANEL_TITLES[3], fontsize=10)
    ax_feed.axis("off")
    rows = [_alert_cells(a) for a in state.latest_alerts]
    if rows:
        table = ax_feed.table(
            cellText=rows, colLabels=["amount", "rules", "account", "time"],
            loc="upper center", cellLoc="left", colWidths=[0.17, 0.45, 0.16, 0.22],
        )
        table.auto_set_font_size(False)
        table.set_fontsize(7.5)
        for i, alert in enumerate(state.latest_alerts, start=1):
            if alert.get("severity") == "CRITICAL":
                for j in range(4):
                    table[i, j].set_facecolor("#F9D6D2")
    else:
        ax_feed.text(0.5, 0.5, "no alerts yet", ha="center", va="center")
    return fig


def figure_png(fig: Figure, dpi: int = 80) -> bytes:
    """The figure rendered to PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _cards(state: DashboardState) -> list[tuple[str, str]]:
    return [
        ("txn/s", f"{state.last_rows_per_s:,.0f}"),
        ("total processed", f"{state.total_rows:,}"),
        ("fraud count", f"{state.fraud:,}"),
        ("fraud rate", f"{state.fraud_rate:.3%}"),
        ("batch", f"{state.batches:,}"),
        ("uptime", f"{state.uptime_s:,.1f} s"),
    ]


def _cards_line(state: DashboardState, title: str) -> str:
    line = "   ".join(f"{k}: {v}" for k, v in _cards(state))
    return f"{title}\n{line}" if title else line


def _alert_cells(alert: Mapping[str, Any]) -> list[str]:
    amount = alert.get("amount")
    amount_text = f"{amount:,.2f}" if isinstance(amount, (int, float)) else str(amount)
    fired = alert.get("rules") or []
    fired_text = ", ".join(fired) if not isinstance(fired, str) else fired
    when = alert.get("event_time")
    if when is not None and not isinstance(when, str):
        when = schema.format_event_time(when)
    when_text = str(when or "")[:19].replace("T", " ")  # to the second
    return [amount_text, fired_text, str(alert.get("account", "")), when_text]


def cards_html(state: DashboardState) -> str:
    """The stat cards as an HTML snippet."""
    cells = "".join(
        "<div style='display:inline-block;min-width:120px;margin:3px;padding:6px 10px;"
        "border:1px solid #ccc;border-radius:6px;background:#f7f9fc'>"
        f"<div style='font-size:11px;color:#666'>{html.escape(k)}</div>"
        f"<div style='font-size:18px;font-weight:bold'>{html.escape(v)}</div></div>"
        for k, v in _cards(state)
    )
    return f"<div>{cells}</div>"


def alerts_html(state: DashboardState) -> str:
    """The latest alerts as an HTML table; critical ones on a red background."""
    head = "".join(f"<th>{h}</th>" for h in ("amount", "rules", "account", "time", "severity"))
    body = []
    for alert in state.latest_alerts:
        style = " style='background:#F9D6D2'" if alert.get("severity") == "CRITICAL" else ""
        cells = _alert_cells(alert) + [str(alert.get("severity") or "")]
        body.append(f"<tr{style}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                    + "</tr>")
    if not body:
        body.append("<tr><td colspan='5'>no alerts yet</td></tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def summary_html(state: DashboardState, title: str = "") -> str:
    """A plain HTML table of the figures and the latest alerts (renders on GitHub)."""
    rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                   f"<td>{html.escape(v)}</td></tr>" for k, v in _cards(state))
    rule_rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                        f"<td>{v:,}</td></tr>" for k, v in state.by_rule.items())
    heading = f"<h4>{html.escape(title)}</h4>" if title else ""
    return (f"{heading}<table><tbody>{rows}{rule_rows}</tbody></table>"
            f"<p><b>Latest alerts</b></p>{alerts_html(state)}")


# --- the dashboard ---------------------------------------------------------------------


class Dashboard:
    """Live figures of a running stage, fed one :class:`~bankcourse.meter.BatchMetrics`
    at a time.

    Args:
        title: shown above the figures. Default: ``"bankcourse"``.
        live: draw while the stage runs (ipywidgets). Default: None, meaning live
            unless :func:`headless` says no person is watching.
        refresh_s: the shortest time between two redraws. Default: 0.5.
        window: batches shown on the throughput line. Default: 40.
        max_alerts: alerts kept in the feed. Default: 8.
        clock: a monotonic clock in seconds, used only to pace redraws.
            Default: ``time.monotonic``.

    ``update`` is thread-safe (Spark calls it from its listener thread).
    """

    def __init__(
        self,
        title: str = "bankcourse",
        *,
        live: bool | None = None,
        refresh_s: float = 0.5,
        window: int = 40,
        max_alerts: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if refresh_s < 0:
            raise ValueError(f"refresh_s must be >= 0 seconds, got {refresh_s}")
        self.title = title
        self.live = (not headless()) if live is None else bool(live)
        self.refresh_s = float(refresh_s)
        self.state = DashboardState(window=window, max_alerts=max_alerts)
        self._clock = clock
        self._lock = threading.Lock()
        self._last_draw: float | None = None
        self._interval_s = self.refresh_s
        self.redraws = 0
        self.draw_s = 0.0
        self.closed = False
        self._widgets: dict[str, Any] | None = None
        self._handle: Any = None

    # --- feeding -----------------------------------------------------------------------

    def update(self, metrics: Any) -> None:
        """Add one batch; redraw if live and at least the refresh interval has passed."""
        with self._lock:
            self.state.add(metrics)
            if not self.live or self.closed:
                return
            now = self._clock()
            if self._last_draw is not None and now - self._last_draw < self._interval_s:
                return
            self._redraw(now)

    __call__ = update

    def extend(self, batches: Iterable[Any]) -> Dashboard:
        """Add many batches (for example a stage report's history); returns self."""
        for metrics in batches:
            self.update(metrics)
        return self

    def _redraw(self, now: float) -> None:
        began = self._clock()
        try:
            self._draw_widgets()
        except Exception:  # a display problem must never stop the stream
            log.warning("dashboard redraw failed; the stage goes on", exc_info=True)
        cost = max(self._clock() - began, 0.0)
        self.draw_s += cost
        self.redraws += 1
        self._last_draw = now
        # Keep drawing to about a tenth of the time when rendering is slow.
        self._interval_s = max(self.refresh_s, 10.0 * cost)

    # --- live widgets ------------------------------------------------------------------

    def _ensure_widgets(self) -> dict[str, Any]:
        if self._widgets is None:
            import ipywidgets as widgets

            self._widgets = {
                "title": widgets.HTML(f"<h4 style='margin:2px'>{html.escape(self.title)}</h4>"),
                "cards": widgets.HTML(cards_html(self.state)),
                "chart": widgets.Image(format="png"),
                "alerts": widgets.HTML(alerts_html(self.state)),
            }
            w = self._widgets
            self._widgets["box"] = widgets.VBox([w["title"], w["cards"], w["chart"],
                                                 w["alerts"]])
        return self._widgets

    def _draw_widgets(self) -> None:
        w = self._ensure_widgets()
        w["cards"].value = cards_html(self.state)
        w["chart"].value = figure_png(
            draw_figure(self.state, width_in=10.0, feed=False), dpi=72)
        w["alerts"].value = alerts_html(self.state)

    def show(self) -> Dashboard:
        """Put the live view in the cell's output (nothing when not live); returns self."""
        if self.live and self._handle is None:
            from IPython.display import display

            self._handle = display(self._ensure_widgets()["box"], display_id=True)
        return self

    def _ipython_display_(self) -> None:
        self.show()

    # --- the end -----------------------------------------------------------------------

    def figure(self) -> Figure:
        """The four panels for the batches so far."""
        with self._lock:
            return draw_figure(self.state, self.title)

    def summary(self) -> dict[str, Any]:
        """The dashboard's figures as a JSON-ready dict (see :meth:`DashboardState.summary`)."""
        with self._lock:
            return self.state.summary()

    def close(self, *, show: bool = True) -> Figure:
        """Finish: draw the final static figure and HTML table into the output.

        In a live view, the widgets are replaced by the static picture, so the saved
        notebook holds a PNG and a table rather than widgets. Outside IPython nothing
        is displayed. Returns the final Figure (four panels).
        """
        with self._lock:
            self.closed = True
            fig = draw_figure(self.state, self.title)
        if show and _in_ipython():
            from IPython.display import HTML, Image, display

            picture = Image(data=figure_png(fig, dpi=80), format="png")
            if self._handle is not None:
                self._handle.update(picture)
            else:
                display(picture)
            display(HTML(summary_html(self.state, self.title)))
        if self._widgets is not None:
            self._widgets["box"].close()
        log.info("dashboard closed title=%r batches=%d rows=%d redraws=%d draw_s=%.3f",
                 self.title, self.state.batches, self.state.total_rows, self.redraws,
                 self.draw_s)
        return fig

    def __enter__(self) -> Dashboard:
        return self.show()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self.state
        return (f"Dashboard(title={self.title!r}, live={self.live}, batches={s.batches}, "
                f"total_rows={s.total_rows}, fraud={s.fraud}, alerts={s.alerts})")


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return False
    return get_ipython() is not None
