"""The event graph as an inline SVG timeline: events in date order on one line, each
``caused_by`` edge an arc from cause to effect labelled with its interval and operation.

Built as a string with every piece of text escaped (event texts are model output).
"""

from __future__ import annotations

from dataclasses import dataclass

from markupsafe import Markup, escape

from mcu_sim.personas.schema import DATE_FORMAT, EventGraph

SPACING = 180
MARGIN = 100
RADIUS = 14
LABEL_CHARS = 24


@dataclass(frozen=True)
class Layout:
    width: int
    height: int
    baseline: int
    x: dict[int, int]  # event id -> x


def shorten(text: str, limit: int = LABEL_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def interval_text(interval: str) -> str:
    """``"6 week"`` (the schema's normal form) -> ``"6 weeks"``."""
    amount, _, unit = interval.partition(" ")
    return interval if amount == "1" or not unit or unit.endswith("s") else f"{interval}s"


def arc_height(distance: int) -> int:
    return min(40 + 40 * distance, 220)


def layout(graph: EventGraph) -> Layout:
    ordered = graph.chronological()
    position = {event.id: i for i, event in enumerate(ordered)}
    spans = [
        abs(position[e.id] - position[e.caused_by.id]) for e in ordered if e.caused_by is not None
    ]
    top = arc_height(max(spans)) + 34 if spans else 24
    width = max(2 * MARGIN + (len(ordered) - 1) * SPACING, 420)
    return Layout(
        width=width,
        height=top + 76,
        baseline=top,
        x={event.id: MARGIN + i * SPACING for i, event in enumerate(ordered)},
    )


def _edge(x1: int, x2: int, y: int, interval: str, op: str, experience: str) -> str:
    height = arc_height(abs(x2 - x1) // SPACING)
    start, end = y - RADIUS, y - RADIUS - 4
    path = f"M{x1},{start} C{x1},{y - height} {x2},{y - height} {x2},{end}"
    label_y = y - round(height * 0.75) - 6
    return (
        f'<g class="edge {escape(op)}"><title>{escape(op)}: {escape(experience)}</title>'
        f'<path d="{path}" marker-end="url(#tl-arrow-{escape(op)})"/>'
        f'<text x="{(x1 + x2) // 2}" y="{label_y}" text-anchor="middle">'
        f"+{escape(interval_text(interval))} · {escape(op)}</text></g>"
    )


def _node(event_id: int, x: int, y: int, date: str, text: str, session: int | None) -> str:
    body = (
        f'<circle cx="{x}" cy="{y}" r="{RADIUS}"/>'
        f'<text class="id" x="{x}" y="{y + 5}" text-anchor="middle">{event_id}</text>'
        f'<text class="date" x="{x}" y="{y + RADIUS + 20}" text-anchor="middle">{date}</text>'
        f'<text class="label" x="{x}" y="{y + RADIUS + 38}" text-anchor="middle">'
        f"{escape(shorten(text))}</text>"
    )
    title = f"<title>event {event_id}, {date}: {escape(text)}</title>"
    if session is None:
        return f'<g class="event" data-event="{event_id}">{title}{body}</g>'
    return (
        f'<a href="#session-{session}"><g class="event has-session" data-event="{event_id}">'
        f"{title}{body}</g></a>"
    )


def timeline_svg(graph: EventGraph, sessions_by_event: dict[int, int] | None = None) -> Markup:
    """SVG markup of ``graph``; events that have a session link to it."""
    sessions_by_event = sessions_by_event or {}
    box = layout(graph)
    y = box.baseline
    parts = [
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{box.width}" '
        f'height="{box.height}" viewBox="0 0 {box.width} {box.height}" role="img" '
        f'aria-label="event timeline">',
        "<defs>",
        *(
            f'<marker id="tl-arrow-{op}" class="arrow {op}" viewBox="0 0 10 10" refX="9" '
            'refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
            '<path d="M0,0 L10,5 L0,10 z"/></marker>'
            for op in ("add", "update")
        ),
        "</defs>",
        f'<line class="axis" x1="{MARGIN // 2}" y1="{y}" x2="{box.width - MARGIN // 2}" y2="{y}"/>',
    ]
    by_id = {event.id: event for event in graph.events}
    for event in graph.chronological():
        edge = event.caused_by
        if edge is not None and edge.id in by_id:
            parts.append(
                _edge(
                    box.x[edge.id],
                    box.x[event.id],
                    y,
                    edge.time_interval,
                    edge.experience_op,
                    edge.experience,
                )
            )
    for event in graph.chronological():
        parts.append(
            _node(
                event.id,
                box.x[event.id],
                y,
                event.date.strftime(DATE_FORMAT),
                event.event,
                sessions_by_event.get(event.id),
            )
        )
    parts.append("</svg>")
    return Markup("".join(parts))
