"""Write self-contained HTML pages: one per episode, plus an index for a run directory.

Pages carry their CSS and JS inline, load nothing from the network (a Content-Security-Policy
forbids it) and reference images relative to the page, or embed them as ``data:`` URIs.
All text goes through Jinja's autoescaping: episodes contain model output.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from mcu_sim import __version__
from mcu_sim.personas.schema import DATE_FORMAT, EPISODE_ID_PATTERN, Episode
from mcu_sim.runner.outputs import atomic_write_text
from mcu_sim.viewer.images import ImageResolver
from mcu_sim.viewer.load import (
    EpisodeEntry,
    RunContents,
    ViewerError,
    is_run_dir,
    load_episode,
    load_run,
    resolve_episode,
    run_root_of,
)
from mcu_sim.viewer.model import Picture, build_view, face_picture, fmt_score, scores_text
from mcu_sim.viewer.timeline import interval_text, timeline_svg

TEMPLATES = Path(__file__).parent / "templates"
VIEW_DIR = "view"
STATUSES = ("complete", "filtered", "failed", "invalid")


@cache
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["day"] = lambda d: d.strftime(DATE_FORMAT) if isinstance(d, dt.date) else ""
    env.filters["score"] = fmt_score
    env.filters["scores"] = scores_text
    env.filters["interval"] = interval_text
    return env


def relative_href(target: Path, page_dir: Path) -> str:
    return quote(Path(os.path.relpath(target.resolve(), page_dir.resolve())).as_posix())


def render_episode(
    episode: Episode,
    run_root: Path,
    page_dir: Path,
    *,
    embed: bool = False,
    index_href: str | None = None,
) -> str:
    """The HTML of one episode page that will be written into ``page_dir``."""
    view = build_view(episode, ImageResolver(run_root, page_dir, embed))
    sessions_by_event: dict[int, int] = {}
    for session in episode.sessions:
        if session.event_id is not None:
            sessions_by_event.setdefault(session.event_id, session.index)
    return (
        environment()
        .get_template("episode.html.j2")
        .render(
            view=view,
            episode=episode,
            timeline=timeline_svg(episode.events, sessions_by_event) if episode.events else "",
            events=episode.events.chronological() if episode.events else [],
            index_href=index_href,
            version=__version__,
        )
    )


@dataclass
class Card:
    entry: EpisodeEntry
    href: str | None
    face: Picture | None
    detail_href: str | None


def page_path(page_dir: Path, episode_id: str) -> Path:
    """``page_dir/<id>.html`` for an id the schema accepts; refuses any other id, and any
    path that would land outside ``page_dir`` (page names come from episode files)."""
    if not re.fullmatch(EPISODE_ID_PATTERN, episode_id):
        raise ViewerError(f"episode id {episode_id!r} is not a valid id; no page written")
    page = page_dir / f"{episode_id}.html"
    if page.resolve().parent != page_dir.resolve():
        raise ViewerError(f"episode id {episode_id!r} would write outside {page_dir}")
    return page


def render_index(contents: RunContents, page_dir: Path, pages: dict[str, Path], embed: bool) -> str:
    """The run index: one card per episode (incl. failed and unreadable ones)."""
    resolve = ImageResolver(contents.root, page_dir, embed)
    cards = []
    for entry in contents.entries:
        page = pages.get(entry.episode_id)
        cards.append(
            Card(
                entry,
                relative_href(page, page_dir) if page else None,
                face_picture(entry.episode, resolve) if entry.episode else None,
                relative_href(entry.source, page_dir) if entry.source and not page else None,
            )
        )
    counts = {s: sum(1 for e in contents.entries if e.status == s) for s in STATUSES}
    return (
        environment()
        .get_template("index.html.j2")
        .render(
            run=contents,
            title=contents.root.resolve().name,
            cards=cards,
            counts=counts,
            statuses=STATUSES,
            version=__version__,
        )
    )


def default_output(target: Path) -> Path:
    """``RUN/view/index.html`` for a run; ``RUN/view/<id>.html`` for an episode file of a
    run; ``<id>.html`` beside an episode file found elsewhere."""
    if is_run_dir(target):
        return target / VIEW_DIR / "index.html"
    episode_file = resolve_episode(target)
    root = run_root_of(episode_file)
    if episode_file.resolve().parent.name == "episodes":
        return root / VIEW_DIR / f"{episode_file.stem}.html"
    return episode_file.with_suffix(".html")


def write_episode_page(episode_file: Path, out: Path, *, embed: bool = False) -> Path:
    episode = load_episode(episode_file)
    html = render_episode(episode, run_root_of(episode_file), out.parent, embed=embed)
    atomic_write_text(out, html)
    return out


def write_run_pages(run_dir: Path, out: Path, *, embed: bool = False) -> dict[str, Path]:
    """The index at ``out`` and one page per finished episode beside it. Returns the
    written pages by episode id (``"index"`` for the index)."""
    contents = load_run(run_dir)
    if not contents.entries:
        raise ViewerError(
            f"{run_dir} has no episodes yet (episodes/ and failures/ are empty); "
            "run `mcu run` first or point at another run directory"
        )
    page_dir = out.parent
    index_href = quote(out.name)
    pages: dict[str, Path] = {}
    for entry in contents.entries:
        if entry.episode is None:
            continue
        page = page_path(page_dir, entry.episode_id)
        if page.resolve() == out.resolve():
            raise ViewerError(f"-o {out} would overwrite the page of episode {entry.episode_id}")
        html = render_episode(entry.episode, run_dir, page_dir, embed=embed, index_href=index_href)
        atomic_write_text(page, html)
        pages[entry.episode_id] = page
    atomic_write_text(out, render_index(contents, page_dir, pages, embed))
    return {"index": out, **pages}


def view(target: Path, out: Path | None = None, *, embed: bool = False) -> Path:
    """Write the page(s) for an episode file or a run directory; return the main page."""
    out = out or default_output(target)
    if out.exists() and out.is_dir():
        raise ViewerError(f"-o {out} is a folder; give a file name such as {out / 'index.html'}")
    if is_run_dir(target):
        return write_run_pages(target, out, embed=embed)["index"]
    return write_episode_page(resolve_episode(target), out, embed=embed)
