"""What an export leaves out: the items the §3.9 filters marked.

The filters never delete (``graphs/filters.py``): they record :class:`Removal` marks. An
export applies the item-level ones by default, as STARK's released data does: a session
judged unsafe is left out (with its image requests), a marked image (NSFW, misaligned,
over-matched) is left out of its request (which then reads ``unaligned`` with the rule as
its reason, so the sharing turn still says what was meant to be shown), a marked
alternative candidate and a duplicate persona attribute are left out. The ``removals`` list
stays in every export, so what was left out is still named. ``keep_marked`` exports the
episode as it is, every marked item in place and flagged by ``removals``.

An episode-level mark (``status: filtered``: outside the session bounds, or every session
unsafe) is handled by ``include_filtered``, not here.
"""

from __future__ import annotations

import re

from mcu_sim.graphs.filters import EPISODE, shown_album_photo
from mcu_sim.personas.schema import Episode, ImageRequest, Removal

_SESSION = re.compile(r"^session\[(\d+)\]$")
_PERSONA = re.compile(r"^persona\[(\d+)\]$")
_IMAGE = re.compile(r"^image:([^#]+)(?:#(\d+))?$")


def _strip(request: ImageRequest, mark: Removal) -> ImageRequest:
    return request.model_copy(
        update={
            "image": None,
            "alternatives": [],
            "status": "unaligned",
            "reason": f"left out by the {mark.rule} filter: {mark.reason}"[:300],
        }
    )


def _drop_candidate(request: ImageRequest, index: int) -> ImageRequest:
    """Candidate ``index`` of ``[image, *alternatives]`` left out (an inconsistent one)."""
    candidates = ([request.image] if request.image else []) + list(request.alternatives)
    if not 0 <= index < len(candidates):
        return request
    kept = candidates[:index] + candidates[index + 1 :]
    if request.image is None:
        return request.model_copy(update={"alternatives": kept})
    if index == 0:  # the chosen image itself: the next candidate takes its place
        status = "aligned" if kept else "unaligned"
        update = {"image": kept[0] if kept else None, "alternatives": kept[1:], "status": status}
        return request.model_copy(update=update)
    return request.model_copy(update={"alternatives": kept})


def without_marked(episode: Episode) -> Episode:
    """``episode`` with every item-level marked item left out (see the module docstring)."""
    marks = [m for m in episode.removals if m.target != EPISODE]
    if not marks:
        return episode
    sessions = {int(m.group(1)) for r in marks if (m := _SESSION.match(r.target))}
    persona = {int(m.group(1)) for r in marks if (m := _PERSONA.match(r.target))}
    links = shown_album_photo(episode)  # sharing request -> the album request it shows
    shown_by: dict[str, list[str]] = {}
    for sharing, album in links.items():
        shown_by.setdefault(album, []).append(sharing)
    requests = {r.id: r for r in episode.image_requests}
    for mark in marks:
        match = _IMAGE.match(mark.target)
        if not match or match.group(1) not in requests:
            continue
        request_id, index = match.group(1), match.group(2)
        if index is not None:
            requests[request_id] = _drop_candidate(requests[request_id], int(index))
            continue
        for rid in (request_id, *shown_by.get(request_id, [])):
            requests[rid] = _strip(requests[rid], mark)
    kept_sessions = [s for s in episode.sessions if s.index not in sessions]
    if not kept_sessions:  # every session marked: the episode-level mark decides
        return episode
    album = {d.request_id for d in episode.device_images}  # a photo stays on the phone
    kept_requests = [r for r in requests.values() if r.session not in sessions or r.id in album]
    attributes = [a for i, a in enumerate(episode.persona) if i not in persona]
    return Episode.model_validate(
        episode.model_copy(
            update={
                "sessions": kept_sessions,
                "image_requests": kept_requests,
                "persona": attributes or episode.persona,
            }
        ).model_dump()
    )
