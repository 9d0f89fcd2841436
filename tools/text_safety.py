"""Text safety of a dialogue (STARK §3.9 drops harmful dialogues that need intervention).

Two pluggable checkers share the :class:`TextSafetyChecker` protocol and return a
:class:`SafetyVerdict` (``safe`` / ``needs_caution`` / ``unsafe`` plus a reason):

* :class:`LLMJudgeSafety` (the default): the configured LLM reads the dialogue with the
  ``agents/prompts/judge.j2`` prompt and answers a validated :class:`JudgeVerdict`;
* :class:`ClassifierSafety`: a local transformers text classifier applied turn by turn; the
  most severe turn decides. Model labels map to the three labels (Canary's ``casual`` …
  ``needs_intervention``, toxicity labels and our own names are understood by default).

A checker that cannot judge returns ``label=None`` and a reason starting ``not judged:``.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from mcu_sim.tools.base import ToolUnavailable
from mcu_sim.tools.clip_score import file_fingerprint
from mcu_sim.tools.scoring import missing_package

if TYPE_CHECKING:
    from mcu_sim.agents.llm.client import LLMClient
    from mcu_sim.config import StepSettings

SafetyLabel = Literal["safe", "needs_caution", "unsafe"]
SEVERITY: dict[str, int] = {"safe": 0, "needs_caution": 1, "unsafe": 2}
REVISION = "1"
REASON_MAX = 300
TURN_MAX_CHARS = 2000


class JudgeVerdict(BaseModel):
    """What the LLM judge must answer."""

    model_config = ConfigDict(extra="forbid")

    label: SafetyLabel
    reason: str = Field(min_length=1, max_length=REASON_MAX)


@dataclass(frozen=True)
class SafetyVerdict:
    """A checker's decision on one dialogue; ``label is None`` means it was not judged."""

    label: SafetyLabel | None
    reason: str
    version: str
    score: float | None = None
    usage: dict[str, Any] | None = None  # LLM tokens spent on this verdict, when an LLM judged

    @property
    def judged(self) -> bool:
        return self.label is not None

    @property
    def is_safe(self) -> bool | None:
        return None if self.label is None else self.label == "safe"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def not_judged(version: str, why: str) -> SafetyVerdict:
    return SafetyVerdict(None, f"not judged: {why}"[:REASON_MAX], version)


@runtime_checkable
class TextSafetyChecker(Protocol):
    """Anything that can label a dialogue given as one line per turn."""

    name: str

    @property
    def version(self) -> str: ...

    def available(self) -> tuple[bool, str]: ...

    async def check(self, dialogue: Sequence[str]) -> SafetyVerdict: ...


def dialogue_lines(turns: Iterable[Any]) -> list[str]:
    """``Speaker: utterance [shares a photo: description]`` per turn of a schema Session's
    ``turns`` (or any objects/dicts with ``speaker``, ``utterance`` and ``sharing``)."""
    lines = []
    for turn in turns:
        # a plain dict (the graph state's turns) first: an ABC check costs a microsecond
        is_mapping = type(turn) is dict or isinstance(turn, Mapping)
        get = turn.get if is_mapping else lambda k, t=turn: getattr(t, k, None)
        text = f"{get('speaker')}: {get('utterance') or ''}".strip()
        sharing = get("sharing")
        if sharing is not None:
            desc = (
                sharing.get("image_description")
                if type(sharing) is dict or isinstance(sharing, Mapping)
                else getattr(sharing, "image_description", "")
            )
            text += f" [shares a photo: {desc}]"
        lines.append(text)
    return lines


# ----------------------------------------------------------------- LLM judge


class LLMJudgeSafety:
    """The LLM judge with the ``judge`` prompt. ``settings`` defaults to the client's
    ``judge`` step settings (greedy, so repeated checks agree)."""

    name = "llm_judge"
    prompt_name = "judge"

    def __init__(
        self,
        llm_client: LLMClient,
        settings: StepSettings | None = None,
        *,
        max_chars: int = 16_000,
    ) -> None:
        from mcu_sim.agents.prompting import load_prompt

        self.client = llm_client
        self.settings = settings if settings is not None else llm_client.config.step("judge")
        self.max_chars = max_chars
        self.prompt = load_prompt(self.prompt_name)
        self.prompt_version = f"{self.prompt.name}@{self.prompt.version}"

    @property
    def version(self) -> str:
        model = self.settings.model or self.client.provider.model
        return f"text-safety/{REVISION} llm-judge {self.prompt_version} model={model}"

    def available(self) -> tuple[bool, str]:
        return True, "ok"

    def render(self, dialogue: Sequence[str]) -> list[dict[str, str]]:
        """The chat messages sent to the judge; turns past ``max_chars`` are cut."""
        turns: list[str] = []
        used = 0
        for line in dialogue:
            line = str(line)[:TURN_MAX_CHARS]
            if used + len(line) > self.max_chars:
                break
            turns.append(line)
            used += len(line)
        return self.prompt.render(turns=turns, truncated=len(turns) < len(dialogue))

    async def check(self, dialogue: Sequence[str]) -> SafetyVerdict:
        from mcu_sim.agents.llm.client import LLMError

        if not dialogue:
            raise ValueError("dialogue is empty; pass one line per turn")
        try:
            completion = await self.client.complete(
                self.render(dialogue),
                schema=JudgeVerdict,
                settings=self.settings,
                prompt_version=self.prompt_version,
            )
        except LLMError as exc:
            spent = getattr(exc, "usage", None)
            verdict_none = not_judged(self.version, f"{type(exc).__name__}: {exc}")
            return replace(verdict_none, usage=spent.as_dict() if spent else None)
        verdict: JudgeVerdict = completion.value
        return SafetyVerdict(
            verdict.label, verdict.reason, self.version, usage=completion.usage.as_dict()
        )


# ----------------------------------------------------------------- classifier

_SAFE_NAMES = {"safe", "casual", "normal", "neutral", "ok", "non_toxic", "not_toxic", "benign"}
_UNSAFE_WORDS = (
    "unsafe",
    "intervention",
    "toxic",
    "hate",
    "harm",
    "offensive",
    "violen",
    "sexual",
    "threat",
    "insult",
    "obscene",
    "abuse",
)


def default_safety_label(model_label: str) -> SafetyLabel | None:
    """Map a classifier's label name to ours; None when it is not recognised."""
    name = re.sub(r"[\s\-]+", "_", model_label.strip().strip("_").lower())
    if name in _SAFE_NAMES:
        return "safe"
    if "caution" in name:
        return "needs_caution"
    if any(word in name for word in _UNSAFE_WORDS):
        return "unsafe"
    return None


class ClassifierSafety:
    """A transformers text classifier over each turn; the most severe turn decides."""

    name = "classifier"

    def __init__(
        self,
        model_path: str | Path,
        device: str = "cpu",
        *,
        label_map: Mapping[str, SafetyLabel] | None = None,
        batch_size: int = 16,
        max_length: int = 256,
    ) -> None:
        self.model_path = Path(model_path)
        self.device = device
        self.label_map = dict(label_map or {})
        self.batch_size = batch_size
        self.max_length = max_length
        self._pipe: Any = None
        self._mapping: dict[str, SafetyLabel] = {}
        self._failure: str | None = None
        self._lock = threading.Lock()
        self._version: str | None = None

    @property
    def version(self) -> str:
        if self._version is None:
            weights = next(iter(sorted(self.model_path.glob("*.safetensors"))), None)
            label = file_fingerprint(weights) if weights else self.model_path.name
            self._version = f"text-safety/{REVISION} classifier {label}"
        return self._version

    def available(self) -> tuple[bool, str]:
        if self._failure:
            return False, self._failure
        if not (self.model_path / "config.json").is_file():
            return False, f"text classifier folder {self.model_path} has no config.json"
        missing = missing_package("transformers", "transformers")
        return (False, missing) if missing else (True, "ok")

    def load(self) -> None:
        """Load the pipeline once and map its labels; raise ToolUnavailable otherwise."""
        with self._lock:
            if self._pipe is not None:
                return
            ok, why = self.available()
            if not ok:
                self._failure = why
                raise ToolUnavailable(self.name, why)
            try:
                self._pipe, self._mapping = self._build()
            except Exception as exc:
                self._failure = (
                    exc.reason
                    if isinstance(exc, ToolUnavailable)
                    else f"loading failed: {type(exc).__name__}: {exc}"
                )
                raise ToolUnavailable(self.name, self._failure) from exc

    def _build(self) -> tuple[Any, dict[str, SafetyLabel]]:
        from transformers import pipeline

        pipe = pipeline("text-classification", model=str(self.model_path), device=self.device)
        mapping: dict[str, SafetyLabel] = {}
        unknown = []
        for label in pipe.model.config.id2label.values():
            ours = self.label_map.get(label) or default_safety_label(str(label))
            if ours is None:
                unknown.append(label)
            else:
                mapping[label] = ours
        if unknown:
            raise ToolUnavailable(
                self.name,
                f"labels {unknown} of {self.model_path.name} have no safety label; give "
                "label_map={model_label: 'safe' | 'needs_caution' | 'unsafe'}",
            )
        return pipe, mapping

    def check_sync(self, dialogue: Sequence[str]) -> SafetyVerdict:
        if not dialogue:
            raise ValueError("dialogue is empty; pass one line per turn")
        try:
            self.load()
        except ToolUnavailable as exc:
            return not_judged(self.version, exc.reason)
        lines = [str(line)[:TURN_MAX_CHARS] for line in dialogue]
        outputs = self._pipe(
            lines, top_k=1, truncation=True, max_length=self.max_length, batch_size=self.batch_size
        )
        worst: tuple[int, float, int, str] | None = None  # severity, prob, turn, model label
        for turn, out in enumerate(outputs, start=1):
            top = out[0] if isinstance(out, list) else out
            severity = SEVERITY[self._mapping[top["label"]]]
            key = (severity, float(top["score"]), turn, top["label"])
            if worst is None or key[:2] > worst[:2]:
                worst = key
        assert worst is not None
        severity, prob, turn, model_label = worst
        label = self._mapping[model_label]
        if label == "safe":
            reason = f"all {len(lines)} turns classified safe"
        else:
            reason = f"turn {turn} classified {model_label!r} (p={prob:.2f}): {lines[turn - 1]}"
        return SafetyVerdict(label, reason[:REASON_MAX], self.version, prob)

    async def check(self, dialogue: Sequence[str]) -> SafetyVerdict:
        return await asyncio.to_thread(self.check_sync, list(dialogue))


__all__ = [
    "ClassifierSafety",
    "JudgeVerdict",
    "LLMJudgeSafety",
    "SafetyVerdict",
    "TextSafetyChecker",
    "default_safety_label",
    "dialogue_lines",
]
