"""Samplers for the simulated person (STARK App. A) and the Table 4 sentence templates.

Every sampler takes an explicit :class:`random.Random`; nothing touches the global one.
:func:`sample_person` derives one independent stream per field from the episode seed
(``random.Random(f"{seed}:demographics")`` and so on), so adding a field later never changes
the fields drawn before it, and the same seed gives the same person on any machine (string
seeds are hashed with SHA-512 by :mod:`random`, independent of ``PYTHONHASHSEED``).

Two small departures from the paper's wording, both for English that reads right: the
demographic sentence says ``an 80-year-old`` rather than ``a 80-year-old``, and puts ``the``
before country names that need it (``born in the United Kingdom``).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import random
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

from mcu_sim.personas import lexicons
from mcu_sim.personas.lexicons import AttributeValue, PersonaCategory, eligible
from mcu_sim.personas.schema import Demographics, Relation

__all__ = [
    "ACCESSORIES",
    "TEMPLATES",
    "Person",
    "PersonaCategory",
    "class_word",
    "demographic_sentence",
    "face_prompt",
    "sample_demographics",
    "sample_face_attributes",
    "sample_person",
    "sample_persona_category",
    "sentence_form",
    "substream",
]

# STARK Table 4: one sentence-form template per persona commonsense relation.
TEMPLATES: dict[str, str] = {
    "routine_habit": "My name is {name}. {demographic} {persona} I regularly {commonsense}.",
    "characteristic": "My name is {name}. {demographic} {persona} I {commonsense}.",
    "experience": "My name is {name}. I {commonsense}. Now, {demographic} {persona}",
    "goal_plan": "My name is {name}. {demographic} {persona} I plan {commonsense}.",
    "relationship": "My name is {name}. {demographic} {persona} So, I {commonsense}.",
}

# The frame each template already supplies; a model that repeats it gets it removed.
_LEADS: dict[str, tuple[str, ...]] = {
    "routine_habit": ("i regularly ", "regularly ", "i "),
    "characteristic": ("i ",),
    "experience": ("i ",),
    "goal_plan": ("i plan ", "plan ", "i "),
    "relationship": ("so, i ", "so i ", "i "),
}

# Garments listed after "wearing", then accessories listed last, after "with": a text
# encoder that truncates long prompts (CLIP keeps 77 tokens) loses only accessories.
_WORN = (
    "special_clothing",
    "one_piece_outfit",
    "top",
    "coat",
    "bottom",
    "hat",
    "headband",
    "headscarf",
    "veil",
)
ACCESSORIES = ("tie", "scarf", "belt", "bag", "shoes", "socks")
_DESCRIBED = ("shot", "style", "body_shape", "background", "hair")


class Person(BaseModel):
    """Everything drawn from one seed before any LLM call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int
    demographics: Demographics
    persona_category: PersonaCategory
    face_attributes: dict[str, str]
    face_prompt: str


def substream(seed: int, label: str) -> random.Random:
    """An independent, reproducible random stream for one purpose of one episode seed."""
    return random.Random(f"{seed}:{label}")


# ------------------------------------------------------------------ demographics


def sample_demographics(rng: random.Random) -> Demographics:
    """Age group, then an age inside it (bounds included), gender, birthplace, residence, name.

    The residence is the birthplace with the lexicon's probability (0.7), otherwise another
    of the 19 countries, uniformly. The name is drawn uniformly from the birthplace's list
    for that gender.
    """
    group = rng.choice(lexicons.age_groups())
    age = rng.randint(group.low, group.high)
    gender = rng.choice(lexicons.genders())
    countries = lexicons.countries()
    birthplace = rng.choice(countries)
    if rng.random() < lexicons.same_country_probability():
        residence = birthplace
    else:
        # by identity: the lexicon's countries are distinct and birthplace is one of them
        # (a pydantic == compares every field, 19 times per person)
        residence = rng.choice([c for c in countries if c is not birthplace])
    name = rng.choice(lexicons.first_names(birthplace.name, gender))
    return Demographics(
        age_group=group.label,
        age=age,
        gender=gender,
        birthplace=birthplace.name,
        residence=residence.name,
        name=name,
    )


def sample_persona_category(rng: random.Random) -> PersonaCategory:
    """One of the 50 Table 6 rows, uniformly."""
    return rng.choice(lexicons.persona_categories())


# ------------------------------------------------------------------ face


@functools.lru_cache(maxsize=16_384)  # lists x ages x genders of the shipped pool: a few thousand
def _options(
    values: tuple[AttributeValue, ...], age: int, gender: str
) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The phrases of a value list a person of this age and gender may get, with their
    cumulative weights. Cached on the (frozen, hashable) values themselves: a face draws
    about ten such lists, and filtering and summing them afresh was most of the draw."""
    options = eligible(values, age, gender)
    phrases = tuple(o.value for o in options)
    cumulative = tuple(itertools.accumulate(o.weight for o in options))
    return phrases, cumulative


def _pick(
    rng: random.Random, values: tuple[AttributeValue, ...], age: int, gender: str
) -> str | None:
    """One eligible phrase by weight: the draw ``rng.choices(options, weights)`` makes (one
    ``random()`` scaled by the total weight, bisected into the cumulative weights), written
    out so the stream of values never depends on how a Python version implements it."""
    phrases, cumulative = _options(values, age, gender)
    if not phrases:
        return None
    point = rng.random() * (cumulative[-1] + 0.0)
    return phrases[bisect.bisect(cumulative, point, 0, len(phrases) - 1)]


def sample_face_attributes(rng: random.Random, demographics: Demographics) -> dict[str, str]:
    """One combination from the human attribute pool for this person's age and gender.

    Attributes are drawn in the pool's order; each is present with its probability, unless
    an earlier one excludes it (a one-piece outfit excludes tops and bottoms) or already
    filled its group (one headwear at most). Values restricted to another gender or age
    never appear. The result maps attribute names (plus ``shot``) to phrases.
    """
    age, gender = demographics.age, demographics.gender
    pool = lexicons.human_attribute_pool()
    shot = _pick(rng, pool.shots, age, gender)
    chosen: dict[str, str] = {"shot": shot} if shot else {}
    blocked: set[str] = set()
    groups: set[str] = set()
    for attribute in pool.attributes:
        if attribute.name in blocked or (attribute.group and attribute.group in groups):
            continue
        probability = attribute.probability_for(gender)
        if probability < 1.0 and rng.random() >= probability:
            continue
        if attribute.parts:
            parts = {k: _pick(rng, v, age, gender) for k, v in attribute.parts.items()}
            if None in parts.values():
                continue
            phrase = (attribute.template or "").format(**parts)
        else:
            phrase = _pick(rng, attribute.values, age, gender)
            if phrase is None:
                continue
        chosen[attribute.name] = phrase
        blocked.update(attribute.excludes)
        if attribute.group:
            groups.add(attribute.group)
    return chosen


def _article(age: int) -> str:
    """``an 8-year-old``, ``an 18-year-old``, ``an 80-year-old``, otherwise ``a``."""
    return "an" if str(age).startswith("8") or age in (11, 18) else "a"


def _person_noun(age: int, gender: str) -> str:
    if age < 18:
        return "boy" if gender == "male" else "girl"
    return "man" if gender == "male" else "woman"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def face_prompt(attributes: Mapping[str, str], demographics: Demographics) -> str:
    """A portrait prompt for the face generator, built from sampled attributes.

    Example: ``A waist-up photo of a 42-year-old woman from Japan, fit, with shoulder-length
    wavy black hair, wearing a cream cable-knit sweater and khaki chinos, against a plain
    white wall, natural light portrait photography, with black ankle boots.``
    """
    known = set(_DESCRIBED) | set(_WORN) | set(ACCESSORIES)
    unknown = sorted(set(attributes) - known)
    if unknown:
        raise ValueError(f"unknown face attributes {unknown}; expected some of {sorted(known)}")
    d = demographics
    shot = attributes.get("shot", "a portrait photo")
    noun = _person_noun(d.age, d.gender)
    pieces = [
        f"{shot} of {_article(d.age)} {d.age}-year-old {noun} from {country_phrase(d.birthplace)}"
    ]
    if "body_shape" in attributes:
        pieces.append(attributes["body_shape"])
    if "hair" in attributes:
        pieces.append(f"with {attributes['hair']}")
    worn = [attributes[k] for k in _WORN if k in attributes]
    if worn:
        pieces.append("wearing " + _join(worn))
    pieces.extend(attributes[k] for k in ("background", "style") if k in attributes)
    extras = [attributes[k] for k in ACCESSORIES if k in attributes]
    if extras:
        pieces.append("with " + _join(extras))
    text = ", ".join(pieces) + "."
    return text[0].upper() + text[1:]


def class_word(age: int, gender: str) -> str:
    """The class word for PhotoMaker's trigger (``"<class word> img"``).

    ``boy``/``girl`` under 13, ``teenage boy``/``teenage girl`` from 13 to 17, ``man``/
    ``woman`` from 18 to 64 and ``old man``/``old woman`` from 65: plain words the text
    encoder knows, with age cues strong enough that a rewritten description does not
    turn a 12-year-old or an 80-year-old into a generic adult.
    """
    if gender not in ("male", "female"):
        raise ValueError(f"gender must be 'male' or 'female', got {gender!r}")
    if age < 0:
        raise ValueError(f"age must be non-negative, got {age}")
    male = gender == "male"
    if age < 13:
        return "boy" if male else "girl"
    if age < 18:
        return "teenage boy" if male else "teenage girl"
    if age < 65:
        return "man" if male else "woman"
    return "old man" if male else "old woman"


# ------------------------------------------------------------------ sentences


def country_phrase(name: str) -> str:
    """A country as it reads in a sentence (``the United Kingdom``); unknown names unchanged."""
    try:
        return lexicons.country(name).phrase
    except KeyError:
        return name


def demographic_sentence(d: Demographics) -> str:
    """Table 4's demographic sentence: age and gender, birthplace, residence."""
    return (
        f"I am {_article(d.age)} {d.age}-year-old {d.gender}. "
        f"I was born in {country_phrase(d.birthplace)}, "
        f"I currently reside in {country_phrase(d.residence)}."
    )


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if text.endswith((".", "!", "?")) else text + "."


def _phrase(text: str, relation: str) -> str:
    """The commonsense as a verb phrase the template can finish: no frame, no final dot."""
    phrase = " ".join(text.split()).rstrip(".!").strip()
    lowered = phrase.lower()
    for lead in _LEADS[relation]:
        if lowered.startswith(lead):
            phrase = phrase[len(lead) :]
            break
    return phrase


def sentence_form(
    relation: Relation | str,
    name: str,
    demographics: Demographics,
    persona_sentence: str,
    commonsense: str,
) -> str:
    """Fill the Table 4 template of ``relation`` (routine_habit, characteristic, experience,
    goal_plan or relationship) with the name, demographic sentence, persona sentence and
    commonsense phrase. A frame the model already wrote (``I regularly …``) is not doubled.
    """
    if relation not in TEMPLATES:
        raise ValueError(f"unknown relation {relation!r}; expected one of {sorted(TEMPLATES)}")
    phrase = _phrase(commonsense, relation)
    if not phrase:
        raise ValueError(f"the {relation} commonsense is empty; nothing to put in the template")
    if not persona_sentence.strip():
        raise ValueError("the persona sentence is empty")
    return TEMPLATES[relation].format(
        name=name.strip(),
        demographic=demographic_sentence(demographics),
        persona=_sentence(persona_sentence),
        commonsense=phrase,
    )


# ------------------------------------------------------------------ the whole person


def sample_person(seed: int) -> Person:
    """Demographics, persona category and face, each from its own stream of ``seed``."""
    demographics = sample_demographics(substream(seed, "demographics"))
    category = sample_persona_category(substream(seed, "persona_category"))
    attributes = sample_face_attributes(substream(seed, "face_attributes"), demographics)
    return Person(
        seed=seed,
        demographics=demographics,
        persona_category=category,
        face_attributes=attributes,
        face_prompt=face_prompt(attributes, demographics),
    )
