"""Evaluator role (STARK §4.3, App. B): an LLM judge on STARK's human-evaluation rubric.

Two tasks. **Ratings**: one episode scored on the seven criteria of STARK's human ratings,
each on the paper's 4-point scale (1 not at all … 4 a lot) with a short justification.
**Head-to-head**: two dialogues compared on the paper's six criteria (A / tie / B).

The answer schema lists only the criteria the caller says apply (an episode without a
persona cannot be rated on image-persona relevance), so the model spends no tokens on the
others and cannot invent a score for them. Justification comes before the score so the
model reasons first. With ``images`` (OpenAI image content parts) the user message carries
the pictures after its text; the text always names each image and its description.

This is not the ``judge`` step (the text-safety filter's): its settings are
``llm.steps.evaluator``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from mcu_sim.agents.base import RoleCall
from mcu_sim.agents.llm.client import Completion
from mcu_sim.agents.prompting import load_prompt

RATING_PROMPT = "evaluator"
VERSUS_PROMPT = "evaluator_versus"
STEP = "evaluator"

# STARK App. B.1, in the paper's order: key -> the question, in our words.
RATING_CRITERIA: dict[str, str] = {
    "coherence": (
        "Coherence: do the user and the assistant talk with a natural flow, including "
        "where the conversation moves from one event to the next?"
    ),
    "consistency": (
        "Consistency: do the two speakers avoid contradicting what was said in earlier sessions?"
    ),
    "image_sharing_turn_relevance": (
        "Image-sharing turn relevance: is each image shared at a fitting moment of the "
        "conversation?"
    ),
    "image_dialogue_relevance": (
        "Image-dialogue relevance: how well does each shared image fit the conversation around it?"
    ),
    "image_persona_relevance": (
        "Image-persona relevance: do the shared images reflect who the user is (their "
        "persona, appearance and life)?"
    ),
    "time_interval": (
        "Time interval: does each session read as if the stated time had passed since the "
        "session before it?"
    ),
    "experience": (
        "Experience: is the user's experience stated for a session reflected in that "
        "session's conversation?"
    ),
}
SCALE = {1: "not at all", 2: "a little", 3: "somewhat", 4: "a lot"}

# STARK App. B.2, in the paper's order.
VERSUS_CRITERIA: dict[str, str] = {
    "natural_flow": "Natural flow: which dialogue flows more naturally?",
    "engagingness": "Engagingness: which dialogue is more interesting and engaging?",
    "specificity": "Specificity: which dialogue is more specific?",
    "image_sharing_turn_relevance": (
        "Image-sharing turn relevance: which dialogue shares its images at more fitting moments?"
    ),
    "image_dialogue_consistency": (
        "Image-dialogue consistency: in which dialogue do the images agree better with the "
        "conversation around them?"
    ),
    "overall": "Overall: which dialogue is of higher quality overall?",
}
Choice = Literal["A", "tie", "B"]


class CriterionScore(BaseModel):
    model_config = ConfigDict(extra="forbid")

    justification: str = Field(min_length=3, max_length=400)
    score: int = Field(ge=1, le=4)


class CriterionChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    justification: str = Field(min_length=3, max_length=400)
    choice: Choice


@functools.cache
def rating_model(criteria: tuple[str, ...]) -> type[BaseModel]:
    """The answer schema for these criteria (one required field each), made once per set."""
    return _answer_model("EpisodeRatings", criteria, RATING_CRITERIA, CriterionScore)


@functools.cache
def versus_model(criteria: tuple[str, ...]) -> type[BaseModel]:
    return _answer_model("HeadToHead", criteria, VERSUS_CRITERIA, CriterionChoice)


def _answer_model(
    name: str, criteria: tuple[str, ...], known: dict[str, str], item: type[BaseModel]
) -> type[BaseModel]:
    unknown = [c for c in criteria if c not in known]
    if unknown or not criteria:
        raise ValueError(f"criteria must be a non-empty subset of {list(known)}: {unknown}")
    fields: dict[str, Any] = {c: (item, ...) for c in criteria}
    return create_model(name, __config__=ConfigDict(extra="forbid"), **fields)


def with_images(messages: list[dict[str, Any]], images: Sequence[dict[str, Any]]) -> list:
    """``messages`` with ``images`` (content parts) appended to the last (user) message."""
    if not images:
        return messages
    last = messages[-1]
    parts = [{"type": "text", "text": last["content"]}, *images]
    return [*messages[:-1], {"role": last["role"], "content": parts}]


async def _ask(
    call: RoleCall,
    prompt_name: str,
    schema: type[BaseModel],
    images: Sequence[dict[str, Any]],
    **variables: Any,
) -> tuple[dict[str, Any], Completion, str]:
    prompt = load_prompt(prompt_name)
    messages = with_images(prompt.render(**variables), images)
    completion = await call.llm.complete(
        messages,
        schema=schema,
        settings=call.settings,
        prompt_version=f"{prompt.name}@{prompt.version}",
        seed=call.seed,
        use_cache=call.use_cache,
    )
    return completion.value.model_dump(), completion, prompt.version


def rating_messages(episode: dict[str, Any], criteria: Sequence[str]) -> list[dict[str, Any]]:
    """The rating request's messages without images (what ``mcu judge --estimate`` counts)."""
    return load_prompt(RATING_PROMPT).render(**_rating_variables(episode, criteria))


def _rating_variables(episode: dict[str, Any], criteria: Sequence[str]) -> dict[str, Any]:
    return {
        "episode": episode,
        "criteria": [(c, RATING_CRITERIA[c]) for c in criteria],
        "scale": list(SCALE.items()),
    }


async def rate_episode(
    call: RoleCall,
    episode: dict[str, Any],
    criteria: Sequence[str],
    images: Sequence[dict[str, Any]] = (),
) -> tuple[dict[str, dict[str, Any]], Completion, str]:
    """Scores of ``episode`` (the view :mod:`mcu_sim.dataset.judge.view` builds: persona,
    sessions with their lines) on ``criteria``: ``{criterion: {score, justification}}``."""
    schema = rating_model(tuple(criteria))
    variables = _rating_variables(episode, criteria)
    return await _ask(call, RATING_PROMPT, schema, images, **variables)


def versus_messages(
    first: dict[str, Any], second: dict[str, Any], criteria: Sequence[str]
) -> list[dict[str, Any]]:
    return load_prompt(VERSUS_PROMPT).render(**_versus_variables(first, second, criteria))


def _versus_variables(
    first: dict[str, Any], second: dict[str, Any], criteria: Sequence[str]
) -> dict[str, Any]:
    return {"a": first, "b": second, "criteria": [(c, VERSUS_CRITERIA[c]) for c in criteria]}


async def compare_dialogues(
    call: RoleCall,
    first: dict[str, Any],
    second: dict[str, Any],
    criteria: Sequence[str],
    images: Sequence[dict[str, Any]] = (),
) -> tuple[dict[str, dict[str, Any]], Completion, str]:
    """``first`` is shown as dialogue A, ``second`` as B: ``{criterion: {choice, ...}}``
    with choice ``A``, ``tie`` or ``B`` as shown (the caller un-swaps)."""
    schema = versus_model(tuple(criteria))
    variables = _versus_variables(first, second, criteria)
    return await _ask(call, VERSUS_PROMPT, schema, images, **variables)
