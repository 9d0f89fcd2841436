"""Training formats: LLaVA conversation records (``llava``) and chat messages with image parts
(``sharegpt``), for fine-tuning a multimodal chat model on the episodes as STARK did (ULTRON).

Both are built from one alternating conversation per record: consecutive turns of one
speaker are merged, the conversation starts on the human side (a session header opens each
session) and ends on the model's side (a trailing human message has nothing to learn from and
is left out). The model is the assistant by default (``model_speaker="user"`` trains a user
simulator instead). An image the other speaker shares is an input: an image placeholder whose
file is linked beside the records, path relative to the export folder. An image the model's
own speaker shares is what the model would have to produce, so it is written as text,
``[image: <description>]``, as is any sharing moment whose image was never aligned.
See ``docs/stark_layouts.md`` for the exact layouts.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mcu_sim.dataset.files import link_file, replace_dir, write_lines
from mcu_sim.personas.schema import ASSISTANT, Episode, Session
from mcu_sim.runner.outputs import atomic_write_chunks

UNITS = ("session", "episode")
MODEL_SPEAKERS = ("assistant", "user")
LLAVA_IMAGE = "<image>"
RECORD_FILES = {"llava": "llava.json", "sharegpt": "sharegpt.jsonl"}


@dataclass
class Message:
    """One side's merged turns: parts are ``("text", str)`` or ``("image", relative path)``."""

    model: bool
    session: int
    parts: list[tuple[str, str]] = field(default_factory=list)

    def images(self) -> list[str]:
        return [value for kind, value in self.parts if kind == "image"]

    def chunks(self) -> list[tuple[str, str]]:
        """Parts with neighbouring texts joined by a newline."""
        out: list[tuple[str, str]] = []
        for kind, value in self.parts:
            if kind == "text" and out and out[-1][0] == "text":
                out[-1] = ("text", f"{out[-1][1]}\n{value}")
            else:
                out.append((kind, value))
        return out


def shared_images(episode: Episode, run_dir: Path) -> dict[str, str]:
    """``request id -> relative path`` of every aligned image whose file is in the run."""
    found = {}
    for request in episode.image_requests:
        image = request.image
        if request.status != "aligned" or image is None:
            continue
        path = PurePosixPath(image.path)
        if path.is_absolute() or ".." in path.parts or not (run_dir / path).is_file():
            continue
        found[request.id] = str(path)
    return found


def session_header(session: Session) -> str:
    since = f", {session.time_interval} later" if session.time_interval else ""
    return f"[Session {session.index}, {session.date.isoformat()}{since}]"


def conversation(
    sessions: Iterable[Session], model_speaker: str, images: dict[str, str]
) -> list[Message]:
    """The alternating messages of ``sessions``: human first, the model last."""
    messages: list[Message] = []

    def add(model: bool, session: int, parts: list[tuple[str, str]]) -> None:
        if not parts:
            return
        if messages and messages[-1].model == model:
            messages[-1].parts += parts
            messages[-1].session = session
        else:
            messages.append(Message(model, session, list(parts)))

    for session in sessions:
        add(False, session.index, [("text", session_header(session))])
        for turn in session.turns:
            is_assistant = turn.speaker == ASSISTANT
            model = is_assistant if model_speaker == "assistant" else not is_assistant
            parts = [("text", turn.utterance)] if turn.utterance.strip() else []
            if turn.sharing:
                path = None if model else images.get(turn.request_id or "")
                if path:
                    parts.append(("image", path))
                else:
                    parts.append(("text", f"[image: {turn.sharing.image_description}]"))
            add(model, session.index, parts)
    if messages and not messages[-1].model:
        messages.pop()
    return messages


def units(
    episode: Episode, unit: str, model_speaker: str, images: dict[str, str]
) -> Iterator[tuple[str, list[Message]]]:
    """``(record id, messages)``: one per episode, or one per session with the earlier
    sessions as context (a session in which the model never speaks yields no record)."""
    if unit == "episode":
        messages = conversation(episode.sessions, model_speaker, images)
        if messages:
            yield episode.episode_id, messages
        return
    for n, session in enumerate(episode.sessions, start=1):
        messages = conversation(episode.sessions[:n], model_speaker, images)
        if messages and messages[-1].session == session.index:
            yield f"{episode.episode_id}-session{session.index}", messages


def _text(value: str) -> str:
    # A literal placeholder in an utterance would be taken for an image by the trainer.
    return value.replace(LLAVA_IMAGE, "< image >")


def llava_record(record_id: str, messages: list[Message]) -> dict[str, Any]:
    """``{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value"}]}``; ``image`` is
    a path for one image, a list for several (LLaVA-NeXT), absent for none."""
    conversations = []
    for message in messages:
        values = [
            LLAVA_IMAGE if kind == "image" else _text(value) for kind, value in message.chunks()
        ]
        conversations.append(
            {"from": "gpt" if message.model else "human", "value": "\n".join(values)}
        )
    images = [path for message in messages for path in message.images()]
    record: dict[str, Any] = {"id": record_id}
    if images:
        record["image"] = images[0] if len(images) == 1 else images
    record["conversations"] = conversations
    return record


def sharegpt_record(record_id: str, messages: list[Message]) -> dict[str, Any]:
    """``{"id", "messages": [{"role", "content": [text and image parts]}], "images"}``: the
    conversational format of TRL's vision SFT and of transformers' chat templates."""
    out = []
    for message in messages:
        content = [
            {"type": "image", "image": value}
            if kind == "image"
            else {"type": "text", "text": value}
            for kind, value in message.chunks()
        ]
        out.append({"role": "assistant" if message.model else "user", "content": content})
    images = [path for message in messages for path in message.images()]
    return {"id": record_id, "messages": out, "images": images}


def write_training(
    run_dir: Path,
    episodes: Iterator[Episode],
    target: Path,
    fmt: str,
    *,
    unit: str = "session",
    model_speaker: str = "assistant",
) -> int:
    """Write the ``fmt`` folder (records file and linked images) atomically; returns records."""
    if unit not in UNITS:
        raise ValueError(f"unit {unit!r} must be one of {', '.join(UNITS)}")
    if model_speaker not in MODEL_SPEAKERS:
        raise ValueError(
            f"model speaker {model_speaker!r} must be one of {', '.join(MODEL_SPEAKERS)}"
        )
    render = llava_record if fmt == "llava" else sharegpt_record
    target.parent.mkdir(parents=True, exist_ok=True)
    built = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    count = 0

    def records() -> Iterator[str]:
        nonlocal count
        for episode in episodes:
            images = shared_images(episode, run_dir)
            for record_id, messages in units(episode, unit, model_speaker, images):
                for message in messages:
                    for path in message.images():
                        link_file(run_dir / path, built / path)
                count += 1
                yield json.dumps(render(record_id, messages), ensure_ascii=False)

    try:
        if fmt == "llava":  # LLaVA reads one JSON array

            def array() -> Iterator[bytes]:
                first = True
                for line in records():
                    yield (("[\n" if first else ",\n") + line).encode("utf-8")
                    first = False
                yield b"[]\n" if first else b"\n]\n"

            atomic_write_chunks(built / RECORD_FILES[fmt], array())
        else:
            write_lines(built / RECORD_FILES[fmt], records())
        replace_dir(built, target)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    return count
