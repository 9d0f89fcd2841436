"""One short plain-text answer at a time, checked to be words and punctuation.

The bottom of the stepwise strategy: every stepwise role asks through :func:`ask_text`.
A small model asked for one sentence in plain language writes fluent English far more
often than it fills a many-field JSON object; what it still gets wrong (digit soup, a JSON
fragment, an empty answer) is refused by :func:`check_text` and asked again with another
seed, a bounded number of times, before the role's fallback text is used and the reason
kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from mcu_sim.agents.base import RoleCall
from mcu_sim.agents.llm.client import Completion, LLMOutputError, Usage
from mcu_sim.agents.prompting import load_prompt

ATTEMPTS = 3
# Sampling that suits a small model writing one short piece: some variety, no long tails.
SAMPLING = {"temperature": 0.7, "top_p": 0.9, "frequency_penalty": 0.3, "presence_penalty": 0.0}
STOP_LINE = ["\n"]
PHOTO_STARTS = ("A photo of", "A picture of", "A selfie", "A close-up")

_ALLOWED = re.compile(r"^[\w\s.,!?;:'’\"()\-–—&/%]*$")
_JSON_HINT = re.compile(r"[{}\[\]<>|*#_=\\]|\"\s*:|\b(null|true|false)\b")
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")
_SPEAKER = re.compile(r"^\s*(?:\*\*)?[A-Z][\w .]{0,30}?(?:\*\*)?:\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Words a small model uses when it talks about the request instead of answering it
# ("Here is the sentence:", "Chat so far:", "What an interesting phrase").
_META = re.compile(
    r"\b(sentences?|answers?|phrases?|prompts?|retell\w*|example|chat so far|here is|"
    r"as an ai|language model|narrative|not sure if|revised|version|concise|too long|rephrase\w*|"
    r"rewrit\w*)\b",
    re.I,
)


def words(text: str) -> list[str]:
    """The words (runs of letters, with an inner apostrophe) of ``text``."""
    return _WORD.findall(text)


STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "on",
        "in",
        "at",
        "to",
        "for",
        "with",
        "and",
        "or",
        "but",
        "from",
        "by",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "am",
        "this",
        "that",
        "these",
        "those",
        "it",
        "its",
        "my",
        "your",
        "his",
        "her",
        "their",
        "our",
        "me",
        "you",
        "him",
        "them",
        "we",
        "they",
        "i",
        "photo",
        "picture",
        "image",
        "shows",
        "showing",
        "taken",
        "some",
        "very",
        "just",
        "there",
        "here",
        "love",
        "like",
        "really",
    ]
)


def content_words(text: str) -> list[str]:
    """The words of ``text`` that carry its content, lowercased, in order, once each."""
    found = [w.lower() for w in words(text)]
    return list(dict.fromkeys(w for w in found if w not in STOPWORDS and len(w) > 2))


def check_text(
    text: str, min_words: int = 3, max_words: int = 60, starts: tuple[str, ...] = ()
) -> None:
    """Raise ``ValueError`` unless ``text`` is words and punctuation.

    Refused: empty or too short, too long, characters outside letters, digits and ordinary
    punctuation (JSON braces, markup, special tokens), more than a few digits, a word
    repeated three times in a row, a 'word' no language has (over 20 letters)."""
    stripped = text.strip()
    if starts and not stripped.lower().startswith(tuple(s.lower() for s in starts)):
        raise ValueError(f"does not start with {' or '.join(starts)!r}: {stripped!r:.80}")
    found = words(stripped)
    if len(found) < min_words:
        raise ValueError(f"{len(found)} word(s), at least {min_words} wanted: {stripped!r:.80}")
    if len(found) > max_words:
        raise ValueError(f"{len(found)} words, at most {max_words} wanted")
    if not _ALLOWED.match(stripped) or _JSON_HINT.search(stripped):
        raise ValueError(f"not plain words and punctuation: {stripped!r:.80}")
    digits = sum(c.isdigit() for c in stripped)
    if digits > max(4, len(stripped) // 10):
        raise ValueError(f"{digits} digits: {stripped!r:.80}")
    if _META.search(stripped):
        raise ValueError(f"talks about the request instead of answering: {stripped!r:.80}")
    lowered = [w.lower() for w in found]
    if any(a == b == c for a, b, c in zip(lowered, lowered[1:], lowered[2:], strict=False)):
        raise ValueError(f"a word repeated three times: {stripped!r:.80}")
    if any(len(w) > 20 for w in found):
        raise ValueError(f"a word of over 20 letters: {stripped!r:.80}")


def check_content(text: str, least: int, besides: tuple[str, ...] = ()) -> None:
    """Refuse ``text`` with fewer than ``least`` content words other than the words of
    ``besides`` (possessive or not): "Lena, Lena's a person." is words, but no event."""
    given = {word.lower() for phrase in besides for word in words(phrase)}
    found = [w for w in content_words(text) if w.removesuffix("'s") not in given]
    if len(found) < least:
        raise ValueError(f"{len(found)} content word(s), at least {least} wanted: {text!r:.80}")


ECHO_WORDS = 5  # this many words in a row copied from the request make an echo


def shingles(text: str, size: int = ECHO_WORDS) -> set[tuple[str, ...]]:
    """Every run of ``size`` consecutive words of ``text``, lowercased."""
    found = [w.lower() for w in words(text)]
    return {tuple(found[i : i + size]) for i in range(len(found) - size + 1)}


def check_echo(text: str, seen: set[tuple[str, ...]]) -> None:
    """Refuse ``text`` when it copies ``ECHO_WORDS`` words in a row from ``seen`` (the
    request's shingles): a small model repeats its context instead of adding to it."""
    copied = shingles(text) & seen
    if copied:
        raise ValueError(f"copies the request ({' '.join(next(iter(copied)))!r}): {text!r:.80}")


def tidy(text: str, max_sentences: int = 2, max_chars: int = 300) -> str:
    """The model's answer as a clean piece: one line, no speaker label or quotes, cut after
    ``max_sentences`` sentences, an unfinished last sentence dropped when a whole one is
    left, at most ``max_chars`` characters (cut at a sentence or word end)."""
    line = next((part for part in text.strip().splitlines() if part.strip()), "")
    line = _SPEAKER.sub("", line.strip()).strip().strip('"“”').strip()
    sentences = [s for s in _SENTENCE_END.split(line) if s]
    if len(sentences) > 1 and sentences[-1][-1:] not in ".!?":
        sentences = sentences[:-1]
    line = " ".join(sentences[:max_sentences])
    while len(line) > max_chars:
        cut = max(line.rfind(". ", 0, max_chars), line.rfind("! ", 0, max_chars))
        line = line[: cut + 1] if cut > 0 else line[:max_chars].rsplit(" ", 1)[0]
    if line and line[-1].isalnum():
        line += "."
    return line


@dataclass
class Pieces:
    """What a stepwise role spent and noted across its requests."""

    role: str
    usage: Usage = field(default_factory=Usage)
    texts: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    def completion(self, value: Any) -> Completion:
        """One :class:`Completion` for the role: the summed usage, the pieces as its text,
        each fallback (with its reason) in ``repairs_by_code``."""
        return Completion(
            value, "\n".join(self.texts), self.usage, repairs_by_code=list(self.fallbacks)
        )

    def version(self) -> str:
        """The prompt versions the role used, as one string for the episode's record."""
        return "stepwise " + " ".join(f"{k}@{v}" for k, v in sorted(self.versions.items()))


async def ask_text(
    call: RoleCall,
    pieces: Pieces,
    prompt_name: str,
    *,
    fallback: str,
    what: str,
    max_tokens: int = 60,
    min_words: int = 3,
    max_sentences: int = 2,
    max_chars: int = 300,
    history: list[dict[str, str]] | None = None,
    starts: tuple[str, ...] = (),
    refuse: re.Pattern[str] | None = None,
    attempts: int = ATTEMPTS,
    min_content: int = 0,
    **variables: Any,
) -> str:
    """Ask ``prompt_name`` for one short piece of text; tidy and check it.

    A refused answer is asked again with another seed (``attempts`` in all); then
    ``fallback`` is used and ``what`` with the last reason is noted in ``pieces``.
    ``history`` (chat messages) goes between the prompt's system and user parts; with
    ``starts``, the answer must start with one of these (e.g. ``"A photo of"``); one
    that ``refuse`` matches is refused; one with fewer than ``min_content`` content words
    besides the ``starts`` words (a name) says nothing and is refused too."""
    prompt = load_prompt(prompt_name)
    pieces.versions[prompt.name] = prompt.version
    system, user = prompt.render(**variables)
    messages = [system, *(history or []), user]
    # the instructions are the template's own words, which an answer may well use
    seen = set().union(*(shingles(m["content"]) for m in messages[1:]))
    settings = call.settings.model_copy(update={**SAMPLING, "max_tokens": max_tokens})

    def check(raw: str) -> None:
        text = tidy(raw, max_sentences, max_chars)
        check_text(text, min_words, starts=starts)
        check_content(text, min_content, starts)
        check_echo(text, seen)
        if refuse is not None and refuse.search(text):
            raise ValueError(f"says what this speaker would not: {text!r:.80}")

    reason = ""
    piece = len(pieces.texts)  # each piece of the role its own seeds
    for attempt in range(attempts):
        seed = None if call.seed is None else call.seed + 1000 * piece + attempt
        try:
            completion = await call.llm.complete(
                messages,
                None,
                settings,
                prompt_version=f"{prompt.name}@{prompt.version}",
                seed=seed,
                use_cache=call.use_cache,
                validate=check,
                stop=STOP_LINE,
                repair_turns=0,
            )
        except LLMOutputError as exc:
            pieces.usage = pieces.usage + exc.usage
            reason = str(exc).split(": ", 1)[-1]
            continue
        pieces.usage = pieces.usage + completion.usage
        text = tidy(completion.text, max_sentences, max_chars)
        pieces.texts.append(text)
        return text
    pieces.fallbacks.append(
        f"{pieces.role}: {what} fell back to a fixed text after {attempts} answers (last "
        f"refused: {reason})"
    )
    pieces.texts.append(fallback)
    return fallback
