"""How much of each request repeats a prefix already sent in the same episode.

OpenAI, Azure, vLLM and llama.cpp servers cache the longest prefix a request shares with an
earlier one, so what an episode's requests repeat (the person, the album, earlier sessions)
is what a prefix-caching endpoint can serve cheaply. The measure is in characters of the
serialized messages (``role``, newline, ``content``, newline, for each message in order):
for each request, the longest common prefix with any earlier request of the episode. The
client turns it into tokens as the same share of the endpoint's reported prompt tokens
(:attr:`mcu_sim.agents.llm.types.Usage.repeated_prompt_tokens`). A JSON schema sent as
``response_format`` is not part of the measure.

An episode is the span of :func:`episode_prefixes` (``runner/drive.py`` opens one around
each episode's graph run); it lives in a context variable, so episodes running at once on
one client keep separate records. Outside an episode nothing is measured.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from mcu_sim.agents.llm.types import Message


def serialize(messages: list[Message]) -> str:
    """The text the prefix measure compares: each message's role and content, in order."""
    return "".join(f"{m.get('role', '')}\n{m.get('content') or ''}\n" for m in messages)


def common_prefix(a: str, b: str) -> int:
    """The length of the longest common prefix of ``a`` and ``b``, in characters (a
    binary search over slice comparisons, which run in C)."""
    low, high = 0, min(len(a), len(b))
    if a[:high] == b[:high]:
        return high
    while high - low > 1:  # a[:low] == b[:low] and a[:high] != b[:high]
        middle = (low + high) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle
    return low


class PrefixLog:
    """The serialized requests an episode has sent so far."""

    def __init__(self) -> None:
        self._sent: set[str] = set()

    def note(self, text: str) -> int:
        """Record ``text`` as sent; return how many of its leading characters an earlier
        request of the episode already sent."""
        best = max((common_prefix(text, earlier) for earlier in self._sent), default=0)
        self._sent.add(text)
        return best


_EPISODE: ContextVar[PrefixLog | None] = ContextVar("mcu_sim_episode_prefixes", default=None)


@contextmanager
def episode_prefixes() -> Iterator[PrefixLog]:
    """Measure the requests sent inside this block (and the tasks it starts) as one episode."""
    log = PrefixLog()
    token = _EPISODE.set(log)
    try:
        yield log
    finally:
        _EPISODE.reset(token)


def note_request(messages: list[Message]) -> tuple[int, int]:
    """(repeated characters, characters) of a request being sent; (0, 0) outside an
    episode."""
    log = _EPISODE.get()
    if log is None:
        return 0, 0
    text = serialize(messages)
    return log.note(text), len(text)
