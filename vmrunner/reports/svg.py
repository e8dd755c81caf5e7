"""The machine lifecycle timeline drawn as an SVG picture, for people who would rather look.

One lane per machine, over the run's time: the wait for a machine (thin grey), the machine's
life from allocation to release (a pale bar, its ends marked), each command inside it coloured
by kind (failures in red), snapshots (blue ticks) and restores (purple ticks). Overlapping
lanes are jobs that ran at the same time. Hand-written SVG 1.1: no dependency, opens in any
browser; every mark has a ``<title>`` tooltip.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

from vmrunner.reports.timeline import TimelineEntry, prove, relative_ms

WIDTH = 1100
LABEL_WIDTH = 280
RIGHT_MARGIN = 30
TOP = 70
LANE_HEIGHT = 44
BAR_HEIGHT = 26
BOTTOM = 60
#: Colours (tests look for them in the rendered picture).
LIFE_COLOUR = "#cfe0f5"
WAIT_COLOUR = "#b0b0b0"
EDGE_COLOUR = "#1d3557"
KIND_COLOURS = {"setup": "#7b5ea7", "step": "#2a9d5c", "post": "#e09f1f", "cleanup": "#4f7c8a"}
FAILED_COLOUR = "#d62828"
SNAPSHOT_COLOUR = "#1f6fd6"
RESTORE_COLOUR = "#c026d3"
#: Time (Unix seconds) to x coordinate.
_Scale = Callable[[float], float]


@dataclass(frozen=True, slots=True)
class Lane:
    """One machine's row: who had it and its lifecycle entries."""

    machine_id: str
    job_key: str
    entries: tuple[TimelineEntry, ...]


def lanes(entries: Sequence[TimelineEntry]) -> list[Lane]:
    """One lane per machine allocated, in allocation order, with its job's entries."""
    found: list[Lane] = []
    for entry in entries:
        if entry.kind == "machine_allocated" and entry.machine_id:
            mine = tuple(
                e
                for e in entries
                if e.job_key == entry.job_key and e.machine_id in ("", entry.machine_id)
            )
            found.append(Lane(entry.machine_id, entry.job_key, mine))
    return found


def lane_middle(index: int) -> float:
    """The y coordinate of the middle of lane ``index``'s bar."""
    return TOP + index * LANE_HEIGHT + LANE_HEIGHT / 2


def render_svg(entries: Sequence[TimelineEntry], started_at: float, *, title: str = "") -> str:
    """The SVG document of a run's timeline (``entries`` in time order, times in Unix seconds)."""
    rows = lanes(entries)
    end = max([started_at, *(e.time for e in entries)])
    span = max(end - started_at, 1e-3)
    plot = WIDTH - LABEL_WIDTH - RIGHT_MARGIN
    height = TOP + max(1, len(rows)) * LANE_HEIGHT + BOTTOM

    def x(time: float) -> float:
        return LABEL_WIDTH + (time - started_at) / span * plot

    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="12" y="24" font-size="16" '
        f'font-weight="bold">{escape(title or "Machine lifecycle timeline")}</text>',
    ]
    out += _axis(x, started_at, span, height)
    for index, lane in enumerate(rows):
        out += _lane(index, lane, x, started_at)
    proof = prove(entries)
    out.append(
        f'<text x="12" y="{height - 14}">Total machines used: {proof.total_machines}; allocated '
        f"{proof.machines_allocated}, released {proof.machines_released}, at most "
        f"{proof.peak_machines} at once; "
        f"{proof.commands - proof.stray_commands} of {proof.commands} commands in their job's "
        f"machine</text>"
    )
    out += _legend(height)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _axis(x: _Scale, started_at: float, span: float, height: int) -> list[str]:
    step = _tick_step(span)
    marks: list[str] = []
    tick = 0.0
    while tick <= span + 1e-9:
        left = x(started_at + tick)
        marks.append(
            f'<line x1="{left:.1f}" y1="{TOP - 8}" x2="{left:.1f}" y2="{height - BOTTOM + 4}" '
            f'stroke="#e6e6e6"/>'
        )
        marks.append(
            f'<text x="{left:.1f}" y="{TOP - 14}" text-anchor="middle" '
            f'fill="#555">T+{round(tick * 1000)}ms</text>'
        )
        tick += step
    return marks


def _tick_step(span: float) -> float:
    """A round step giving 4 to 10 ticks over ``span`` seconds."""
    step = 0.001
    while span / step > 10:
        for factor in (2, 2.5, 2):
            step *= factor
            if span / step <= 10:
                break
    return step


def _lane(index: int, lane: Lane, x: _Scale, started_at: float) -> list[str]:
    middle = lane_middle(index)
    top = middle - BAR_HEIGHT / 2
    marks = [
        f'<text x="12" y="{middle - 2:.1f}" font-weight="bold">{escape(lane.job_key)}</text>',
        f'<text x="12" y="{middle + 12:.1f}" fill="#555">{escape(lane.machine_id)}</text>',
    ]
    by_kind = {e.kind: e for e in reversed(lane.entries)}  # the first of each kind
    allocated = by_kind["machine_allocated"].time
    released_entry = next((e for e in lane.entries if e.kind == "machine_released"), None)
    released = released_entry.time if released_entry else max(e.time for e in lane.entries)
    asked = by_kind.get("allocation_requested")
    if asked is not None and allocated > asked.time:
        marks.append(
            _rect(
                x(asked.time),
                middle - 2,
                x(allocated) - x(asked.time),
                4,
                WAIT_COLOUR,
                f"waiting for a machine: {_ms(allocated - asked.time)}",
            )
        )
    life = (
        f"{lane.job_key} in {lane.machine_id}: {relative_ms(allocated, started_at)} to "
        f"{relative_ms(released, started_at)}"
    )
    marks.append(
        _rect(
            x(allocated),
            top,
            max(1.0, x(released) - x(allocated)),
            BAR_HEIGHT,
            LIFE_COLOUR,
            life,
            stroke=EDGE_COLOUR,
        )
    )
    starts: dict[int | None, TimelineEntry] = {}
    for entry in lane.entries:
        if entry.kind == "command_started":
            starts[entry.step_index] = entry
        elif entry.kind == "command_finished" and entry.step_index in starts:
            began = starts.pop(entry.step_index)
            colour = (
                FAILED_COLOUR
                if entry.outcome == "failure"
                else KIND_COLOURS.get(entry.step_kind, KIND_COLOURS["step"])
            )
            label = (
                f"{entry.name} ({entry.step_kind}, exit {entry.exit_code}, "
                f"{_ms(entry.time - began.time)})"
            )
            marks.append(
                _rect(
                    x(began.time),
                    top + 4,
                    max(2.0, x(entry.time) - x(began.time)),
                    BAR_HEIGHT - 8,
                    colour,
                    label,
                )
            )
        elif entry.kind in ("snapshot_taken", "snapshot_restored"):
            colour = SNAPSHOT_COLOUR if entry.kind == "snapshot_taken" else RESTORE_COLOUR
            what = "snapshot" if entry.kind == "snapshot_taken" else "restored"
            marks.append(
                _rect(
                    x(entry.time) - 1.5,
                    top - 6,
                    3,
                    BAR_HEIGHT + 12,
                    colour,
                    f"{what} {entry.detail}",
                )
            )
    marks.append(
        _rect(
            x(allocated) - 1.5,
            top - 4,
            3,
            BAR_HEIGHT + 8,
            EDGE_COLOUR,
            f"allocated {relative_ms(allocated, started_at)}",
        )
    )
    if released_entry is not None:
        marks.append(
            _rect(
                x(released) - 1.5,
                top - 4,
                3,
                BAR_HEIGHT + 8,
                EDGE_COLOUR,
                f"released {relative_ms(released, started_at)}",
            )
        )
    return marks


def _legend(height: int) -> list[str]:
    items = [("waiting", WAIT_COLOUR), ("machine alive", LIFE_COLOUR), *KIND_COLOURS.items(),
             ("failed", FAILED_COLOUR), ("snapshot", SNAPSHOT_COLOUR), ("restore", RESTORE_COLOUR)]
    marks: list[str] = []
    left = 12.0
    for name, colour in items:
        marks.append(
            f'<rect x="{left:.1f}" y="{height - 40}" width="12" height="12" fill="{colour}" '
            f'stroke="#888"/>'
        )
        marks.append(f'<text x="{left + 16:.1f}" y="{height - 30}">{escape(name)}</text>')
        left += 28 + 7 * len(name)
    return marks


def _rect(
    left: float,
    top: float,
    width: float,
    height: float,
    fill: str,
    tooltip: str,
    *,
    stroke: str = "",
) -> str:
    edge = f' stroke="{stroke}"' if stroke else ""
    return (
        f'<rect x="{left:.1f}" y="{top:.1f}" width="{width:.1f}" height="{height:.1f}" '
        f'fill="{fill}"{edge}>'
        f"<title>{escape(tooltip)}</title></rect>"
    )


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"
