"""Per-sample times as a function of the dates per sample, from measured step times."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from geopeft.plan.steptimes import StepTime


@dataclass(frozen=True)
class Curve:
    """Per-sample times of one (kind, model, method) as a function of the dates per sample."""

    points: tuple[tuple[int | None, float, float | None], ...]
    """(dates, train s, validation s) of each measured length, shortest first."""
    startup_s: float | None
    batch_sizes: tuple[int, ...]
    origins: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def at(self, dates: int | None) -> tuple[float, float | None]:
        """(train, validation) seconds per sample at ``dates`` per sample: linear in the dates
        between the measured lengths and beyond them (the nearest two), proportional to the
        dates from a single measured length; image rows take the mean of the measurements.

        Args:
            dates: the row's sequence length (None: an image row).
        """
        pts = self.points
        if dates is None or any(p[0] is None for p in pts):
            vals = [p[2] for p in pts if p[2] is not None]
            return (statistics.fmean(p[1] for p in pts),
                    statistics.fmean(vals) if vals else None)
        lengths = [int(p[0]) for p in pts if p[0] is not None]
        if len(pts) == 1:
            f = dates / lengths[0]
            return pts[0][1] * f, None if pts[0][2] is None else pts[0][2] * f
        i = next((k for k in range(1, len(pts) - 1) if dates <= lengths[k]), len(pts) - 1)
        t0, t1 = lengths[i - 1], lengths[i]

        def line(y0: float, y1: float) -> float:
            y = y0 + (y1 - y0) * (dates - t0) / (t1 - t0)
            near_t, near_y = (t0, y0) if abs(dates - t0) <= abs(dates - t1) else (t1, y1)
            return y if y > 0 else near_y * dates / near_t

        v0, v1 = pts[i - 1][2], pts[i][2]
        return (line(pts[i - 1][1], pts[i][1]),
                None if v0 is None or v1 is None else line(v0, v1))


def curves(steps: list[StepTime], kind: str) -> dict[tuple[str, str], Curve]:
    """The step times of ``kind``, one :class:`Curve` per (model, method); several measurements
    of one length are averaged.

    Args:
        steps: measured step times (:func:`load_measurements`).
        kind: the device kind to keep.
    """
    by: dict[tuple[str, str], list[StepTime]] = {}
    for s in steps:
        if s.kind == kind:
            by.setdefault((s.model, s.method), []).append(s)
    out = {}
    for key, ss in by.items():
        lengths = sorted({s.sequence_length for s in ss}, key=lambda t: -1 if t is None else t)
        pts = []
        for t in lengths:
            at = [s for s in ss if s.sequence_length == t]
            vals = [s.val_s for s in at if s.val_s is not None]
            pts.append((t, statistics.fmean(s.train_s for s in at),
                        statistics.fmean(vals) if vals else None))
        ups = [s.startup_s for s in ss if s.startup_s is not None]
        out[key] = Curve(tuple(pts), statistics.fmean(ups) if ups else None,
                         tuple(sorted({s.batch_size for s in ss if s.batch_size})),
                         tuple(s.origin for s in ss),
                         tuple(dict.fromkeys(s.note for s in ss if s.note)))
    return out
