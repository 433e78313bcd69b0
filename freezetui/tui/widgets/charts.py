"""Training loss per step (smoothed) and validation accuracy per epoch, with an optional run
overlaid for comparison; the loss chart can show the learning rate instead (g). Stage
boundaries of a staged plan are drawn as vertical lines. Redrawn from a timer, from
downsampled data, on the UI thread only."""

from __future__ import annotations

import math

import time

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual_plotext import PlotextPlot


def smooth(values: list[float], alpha: float = 0.1) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else acc + alpha * (v - acc)
        out.append(acc)
    return out


def downsample(xs: list, ys: list, limit: int) -> tuple[list, list]:
    """Keep at most ``limit`` evenly spaced points (and always the last one)."""
    if len(xs) <= limit:
        return xs, ys
    step = len(xs) / limit
    idx = sorted({int(i * step) for i in range(limit)} | {len(xs) - 1})
    return [xs[i] for i in idx], [ys[i] for i in idx]


class TimedPlot(PlotextPlot):
    """Plotext builds the whole plot in Python on every render: remember how long that took, so
    the app can space redraws out (see FreezeApp.redraw_charts)."""

    render_seconds = 0.0

    def render(self):
        t0 = time.perf_counter()
        out = super().render()
        self.render_seconds = time.perf_counter() - t0
        return out


def int_ticks(last: int, room: int) -> list[int]:
    """Whole numbers from 1 to ``last`` at a round spacing (1, 2, 5, 10, 20, 50, …), about one
    tick per 8 columns: a run's epochs and steps are counted, never fractional."""
    count = max(2, room // 8)
    step = 1
    while -(-last // step) > count:
        step = step * 5 // 2 if str(step)[0] == "2" else step * 2
    if step == 1:
        return list(range(1, last + 1))
    return [1, *range(step, last + 1, step)]


epoch_ticks = int_ticks


def legend(entries: list[tuple[str, str]]) -> str:
    """A legend for the chart's border title: plotext draws its own over the curves."""
    return " ".join(f"[{color}]━{label}[/]" for label, color in entries)


def stage_epochs(record) -> list[int]:
    return [s["epoch"] for s in getattr(record, "stages", None) or [] if isinstance(s.get("epoch"), int)]


def record_rates(record, limit: int) -> tuple[list[int], list[float]]:
    """The head's rate at up to ``limit`` steps of a run, recomputed from its settings and
    stages (rates are a pure function of the step, see core.schedule)."""
    from ...core.schedule import head_rates, sample_steps

    c = record.config
    if not record.total_steps or not c.epochs:
        return [], []
    xs = sample_steps(record.total_steps, limit)
    return xs, head_rates(record.stages, c.schedule, c.effective_lr, record.total_steps // c.epochs, c.epochs,
                          c.warmup_epochs, at=xs)


class LossChart(TimedPlot):
    TITLE = "train loss/step"
    LR_TITLE = "lr/step"

    def on_mount(self) -> None:
        self.border_title = self.TITLE

    def draw(self, current, compare=None, show_lr: bool = False, planned=None) -> None:
        self.plt.clear_data()
        self.plt.yscale("linear")
        limit = max(20, self.size.width)
        shown, last, marks, next_run = [], 1, [], False
        if show_lr:
            series = [(compare, "orange", record_rates(compare, limit) if compare else ([], []))]
            if (current is not None and current.status == "running") or planned is None:
                series.append((current, "cyan", record_rates(current, limit) if current else ([], [])))
            else:  # between runs: what the next run will do under the plan being edited
                series.append((None, "green", planned[0]))
            for record, color, (xs, ys) in series:
                if not ys:
                    continue
                self.plt.plot(xs, ys, color=color, marker="braille")
                shown.append((record.label if record else "next run", color))
                last = max(last, xs[-1])
            if planned is not None and series[-1][0] is None:
                marks, next_run = list(planned[1]), True
        else:
            for record, color in ((compare, "orange"), (current, "cyan")):
                if record is not None and record.steps:
                    ys = smooth(list(record.steps))
                    xs, ys = downsample(list(range(1, len(ys) + 1)), ys, limit)
                    self.plt.plot(xs, ys, color=color, marker="braille")
                    shown.append((record.label, color))
                    last = max(last, len(record.steps))
        # the next run's view marks only its own stages (none after X), never the last run's
        if current is not None and not next_run and current.total_steps and current.config.epochs:
            steps = current.total_steps // current.config.epochs
            marks = [(e - 1) * steps + 1 for e in stage_epochs(current)]
        for x in marks:
            if x <= last:
                self.plt.vline(x, "yellow")
        ticks = int_ticks(last, self.size.width)
        self.plt.xticks(ticks, [str(t) for t in ticks])
        title = self.LR_TITLE if show_lr else self.TITLE
        self.border_title = f"{title} {legend(shown)}" if len(shown) > 1 or show_lr and shown else title
        self.refresh()


PERCENT_STEPS = (0.5, 1, 2, 5, 10, 20, 25)
MIN_SPAN = 2.0  # points: a 0.4-point change is not drawn as a cliff


def percent_ticks(values: list[float], room: int) -> tuple[float, float, list[float]]:
    """(low, high, ticks) for accuracies in percent: whole or half points, a span of at least
    ``MIN_SPAN`` points within 0–100, at most about ``room`` ticks."""
    lo, hi = math.floor(min(values)), math.ceil(max(values))
    if hi - lo < MIN_SPAN:
        mid = (lo + hi) / 2
        lo, hi = math.floor(mid - MIN_SPAN / 2), math.ceil(mid + MIN_SPAN / 2)
    lo, hi = max(0.0, lo), min(100.0, hi)
    if hi - lo < MIN_SPAN:  # pressed against 0 or 100
        lo, hi = (0.0, MIN_SPAN) if lo == 0 else (100.0 - MIN_SPAN, 100.0)
    step = next((s for s in PERCENT_STEPS if (hi - lo) / s <= max(1, room)), 50)
    first = math.ceil(lo / step) * step
    ticks = [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]
    return lo, hi, ticks


def _pct_label(x: float) -> str:
    return f"{x:g}"


class AccuracyChart(TimedPlot):
    TITLE = "val acc % · loss •"

    def on_mount(self) -> None:
        self.border_title = self.TITLE

    def draw(self, current, compare=None) -> None:
        self.plt.clear_data()
        last = 1
        shown = []
        for record, color in ((compare, "orange"), (current, "cyan")):
            if record is not None and record.epochs:
                xs = [e["epoch"] for e in record.epochs]
                last = max(last, xs[-1])
                # one epoch is one point: draw it large enough to be seen
                marker = "braille" if len(xs) > 1 else "●"
                self.plt.plot(xs, [100 * e["val_acc"] for e in record.epochs], color=color, marker=marker)
                self.plt.plot(xs, [e["val_loss"] for e in record.epochs], color=color, yside="right",
                              marker="dot" if len(xs) > 1 else "○")
                shown.append((record.label, color))
        accs = [100 * e["val_acc"] for r in (compare, current) if r is not None for e in r.epochs]
        if accs:
            lo, hi, yticks = percent_ticks(accs, max(2, (self.size.height - 3) // 2))
            self.plt.ylim(lo, hi)
            self.plt.yticks(yticks, [_pct_label(t) for t in yticks])
        if current is not None:
            for e in stage_epochs(current):  # a stage starts at epoch e: between e - 1 and e
                if e <= last:
                    self.plt.vline(e - 0.5, "yellow")
        ticks = epoch_ticks(last, self.size.width)
        self.plt.xticks(ticks, [str(t) for t in ticks])
        self.plt.xlim(0.5 if last == 1 else 1, last + 0.5 if last == 1 else last)
        self.border_title = f"{self.TITLE} {legend(shown)}" if len(shown) > 1 else self.TITLE
        self.refresh()


class Charts(Horizontal):
    """Both plots. Plotting is pure Python and holds the GIL the training thread needs, so it may
    take at most ~2.5 % of the time: after plots that took d seconds to render, the next redraw
    waits at least 40·d, and at least a second (see :meth:`redraw`)."""

    dirty = False
    last_draw = 0.0
    show_lr = False  # the left chart shows the learning rate instead of the loss (g)

    def compose(self) -> ComposeResult:
        yield LossChart(id="loss-chart")
        yield AccuracyChart(id="acc-chart")

    def draw(self, current, compare=None, planned=None) -> None:
        self.query_one(LossChart).draw(current, compare, self.show_lr, planned)
        self.query_one(AccuracyChart).draw(current, compare)

    def redraw(self, current, compare=None, force: bool = False, planned=None) -> None:
        """Redraw when the data changed (``dirty``) and the time budget allows, or when forced."""
        if not self.dirty:
            return
        now = time.monotonic()
        if not force and now - self.last_draw < max(1.0, 40 * self.render_seconds):
            return
        self.dirty = False
        self.draw(current, compare, planned)
        self.last_draw = now

    @property
    def render_seconds(self) -> float:
        """What the last redraw of both plots cost."""
        return sum(p.render_seconds for p in self.query(TimedPlot))
