"""The live loss chart as inline SVG: identical in every gradio version, no plotting library."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

WIDTH, HEIGHT, PAD = 560, 200, 36


def _smooth(values: Sequence[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average, as TensorBoard draws it."""
    out: list[float] = []
    last = values[0] if values else 0.0
    for value in values:
        last = weight * last + (1 - weight) * value
        out.append(last)
    return out


def loss_svg(points: Sequence[tuple[int, float]], title: str = "loss") -> str:
    """An SVG line chart of (step, loss) points; raw values faint, smoothed line bold."""
    clean = [(int(s), float(v)) for s, v in points if v is not None and math.isfinite(float(v))]
    attrs = f'class="lora-bridge-chart" data-points="{len(clean)}"'
    if not clean:
        return (f'<div {attrs}><svg width="{WIDTH}" height="{HEIGHT}" role="img"><text x="{PAD}" y="{HEIGHT // 2}" '
                f'fill="gray">{html.escape(title)}: no steps yet</text></svg></div>')
    steps = [s for s, _ in clean]
    values = [v for _, v in clean]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    s0, s1 = min(steps), max(steps)
    span = max(s1 - s0, 1)

    def xy(step: int, value: float) -> str:
        x = PAD + (step - s0) / span * (WIDTH - 2 * PAD)
        y = HEIGHT - PAD - (value - lo) / (hi - lo) * (HEIGHT - 2 * PAD)
        return f"{x:.1f},{y:.1f}"

    raw = " ".join(xy(s, v) for s, v in clean)
    smooth = " ".join(xy(s, v) for s, v in zip(steps, _smooth(values), strict=True))
    last = clean[-1]
    return (
        f'<div {attrs}><svg width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{html.escape(title)} chart">'
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="none" stroke="#8884"/>'
        f'<polyline points="{raw}" fill="none" stroke="#f97316" stroke-opacity="0.35" stroke-width="1"/>'
        f'<polyline points="{smooth}" fill="none" stroke="#f97316" stroke-width="2"/>'
        f'<text x="{PAD}" y="16" font-size="12" fill="currentColor">{html.escape(title)} '
        f'(step {last[0]}: {last[1]:.4f})</text>'
        f'<text x="4" y="{PAD}" font-size="10" fill="gray">{hi:.3g}</text>'
        f'<text x="4" y="{HEIGHT - PAD}" font-size="10" fill="gray">{lo:.3g}</text>'
        f'<text x="{PAD}" y="{HEIGHT - 8}" font-size="10" fill="gray">{s0}</text>'
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" font-size="10" fill="gray" text-anchor="end">{s1}</text>'
        "</svg></div>"
    )


def progress_html(step: int, total: int, state: str, eta_seconds: float | None) -> str:
    """A small progress bar with the ETA."""
    frac = 0.0 if not total else max(0.0, min(1.0, step / total))
    eta = "" if eta_seconds is None else f" · ETA {format_eta(eta_seconds)}"
    return (f'<div class="lora-bridge-progress" data-step="{step}" data-state="{html.escape(state)}">'
            f'<div class="lora-bridge-progress-bar" style="width:{frac * 100:.1f}%"></div>'
            f'<span>{html.escape(state)} · step {step}/{total}{eta}</span></div>')


def format_eta(seconds: float) -> str:
    """1:02:03 / 2:03 style."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
