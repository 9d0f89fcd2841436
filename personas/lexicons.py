"""Lexicons for the simulated person, loaded from the package's data files and cached.

* ``data/demographics.json``: the 8 age groups, 2 genders and 19 countries of STARK App. A.1,
  and the share of people who live where they were born (0.7).
* ``data/persona_categories.json``: the 50 persona categories with their entity keys
  (Table 6). A row is one (category, entity key) pair, so ``Location ▷ Residence`` appears
  twice, once with ``city-state`` and once with ``country``.
* ``data/human_attributes.yaml``: our own value lists for the App. A.3 attributes of the
  face prompt, with the rules that combine them (see the file's header).
* ``data/first_names.json``: the top 1,000 first names per birthplace country and gender, as
  in the paper, extracted once from the ``names-dataset`` package by
  ``scripts/extract_names.py`` and cleaned by the rules of ``scripts/name_rules.py``
  (``docs/names.md``); the dataset itself is never loaded at run time.
* :data:`DEVICE_IMAGE_CATEGORY_EXAMPLES`: the album photo categories the paper's device prompt
  names as examples (App. F). Categories are free text: these guide the model, they do not
  bound it (the paper counts 467K categories in its album, §4.2).

Names in non-Latin scripts: the dialogue is in English, so only names written in Latin
letters are shipped. names-dataset ranks many names in their native script (Hangul, Han,
Cyrillic, Arabic); those are skipped and the best-ranked Latin-script names are kept,
spelled the way people of that country romanise their own names (``Sergey``, ``Jiyoung``,
``Mahmoud``). Where fewer than 1,000 Latin-script names pass (South Korean women), Hangul
names are romanised (Revised Romanization) and join in rank order. Each country and gender
records where its names came from (``first_name_sources``) and how the list was cut.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mcu_sim.personas.schema import Gender

DATA_PACKAGE = "mcu_sim.personas"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------ demographics


@dataclass(frozen=True)
class AgeGroup:
    low: int
    high: int

    @property
    def label(self) -> str:
        return f"{self.low}-{self.high}"


class Country(_Frozen):
    name: str
    code: str = Field(pattern=r"^[A-Z]{2}$")
    article: bool = False

    @property
    def phrase(self) -> str:
        """The name as it reads inside a sentence: ``the United Kingdom``, ``Japan``."""
        return f"the {self.name}" if self.article else self.name


class DemographicLexicon(_Frozen):
    version: int
    source: str
    age_groups: tuple[str, ...] = Field(min_length=1)
    genders: tuple[Gender, ...] = Field(min_length=1)
    same_country_probability: float = Field(ge=0, le=1)
    countries: tuple[Country, ...] = Field(min_length=2)

    @field_validator("age_groups")
    @classmethod
    def _groups(cls, groups: tuple[str, ...]) -> tuple[str, ...]:
        for label in groups:
            low, _, high = label.partition("-")
            if not (low.isdigit() and high.isdigit() and int(low) < int(high)):
                raise ValueError(f"age group {label!r} must look like 'LOW-HIGH' with LOW < HIGH")
        return groups

    @property
    def groups(self) -> tuple[AgeGroup, ...]:
        return tuple(AgeGroup(*(int(x) for x in g.split("-"))) for g in self.age_groups)


# ------------------------------------------------------------------ album photo categories

DEVICE_IMAGE_CATEGORY_EXAMPLES: tuple[str, ...] = (
    "selfie",
    "past memory",
    "screenshot",
    "landmark",
    "animal",
    "art",
    "celebrity",
    "nature",
    "food",
)


# ------------------------------------------------------------------ persona categories


class PersonaCategory(_Frozen):
    """One row of STARK Table 6: a (sub-)category and the key of its persona entity."""

    category: str = Field(min_length=2)
    entity_key: str = Field(min_length=2)


class _PersonaCategoryFile(_Frozen):
    version: int
    source: str
    notes: list[str] = Field(default_factory=list)
    categories: tuple[PersonaCategory, ...] = Field(min_length=1)


# ------------------------------------------------------------------ human attributes


class AttributeValue(_Frozen):
    """A phrase, optionally restricted to a gender or an age range, with a draw weight."""

    value: str = Field(min_length=1)
    gender: Gender | None = None
    min_age: int = 0
    max_age: int = 200
    weight: float = Field(1.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"value": data} if isinstance(data, str) else data

    def allows(self, age: int, gender: str) -> bool:
        return self.gender in (None, gender) and self.min_age <= age <= self.max_age


def eligible(values: tuple[AttributeValue, ...], age: int, gender: str) -> list[AttributeValue]:
    return [v for v in values if v.allows(age, gender)]


class Attribute(_Frozen):
    """One attribute of the pool: how often it is present and the phrases it can take."""

    name: str
    probability: float | dict[Gender, float] = 1.0
    values: tuple[AttributeValue, ...] = ()
    parts: dict[str, tuple[AttributeValue, ...]] = Field(default_factory=dict)
    template: str | None = None
    excludes: tuple[str, ...] = ()
    group: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> Attribute:
        if bool(self.values) == bool(self.parts):
            raise ValueError(f"attribute {self.name!r} needs either 'values' or 'parts'")
        if self.parts and not self.template:
            raise ValueError(f"attribute {self.name!r} has 'parts' but no 'template'")
        if self.template:
            missing = [p for p in self.parts if "{" + p + "}" not in self.template]
            if missing:
                raise ValueError(f"attribute {self.name!r}: template never uses {missing}")
        return self

    def probability_for(self, gender: str) -> float:
        if isinstance(self.probability, dict):
            return self.probability.get(gender, 0.0)
        return self.probability


class AttributePool(_Frozen):
    version: int
    shots: tuple[AttributeValue, ...] = Field(min_length=1)
    attributes: tuple[Attribute, ...] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _named(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("attributes"), dict):
            data = dict(data)
            data["attributes"] = [{"name": k, **v} for k, v in data["attributes"].items()]
        return data

    @model_validator(mode="after")
    def _known_exclusions(self) -> AttributePool:
        names = {a.name for a in self.attributes}
        for attribute in self.attributes:
            unknown = set(attribute.excludes) - names
            if unknown:
                raise ValueError(f"attribute {attribute.name!r} excludes unknown {sorted(unknown)}")
        return self


# ------------------------------------------------------------------ first names


class NameList(_Frozen):
    names: tuple[str, ...] = Field(min_length=1)
    sources: dict[str, int]
    romanised_from: dict[str, str] = Field(default_factory=dict)
    deepest_dataset_rank: int | None = None
    head_names: int | None = None  # how many of ``names`` rank within the dataset's head
    selection: dict[str, Any] = Field(default_factory=dict)  # kept, dropped by rule, the cut

    @model_validator(mode="after")
    def _sources_add_up(self) -> NameList:
        if sum(self.sources.values()) != len(self.names):
            raise ValueError(
                f"sources {self.sources} do not account for the {len(self.names)} names"
            )
        return self


class _FirstNameFile(_Frozen):
    metadata: dict[str, Any]
    names: dict[str, dict[Gender, NameList]]


# ------------------------------------------------------------------ loading


def _read(filename: str) -> str:
    return resources.files(DATA_PACKAGE).joinpath("data", filename).read_text(encoding="utf-8")


def _load(filename: str, model: type[BaseModel]) -> Any:
    """Parse and validate one data file; a broken file names itself and the problem."""
    text = _read(filename)
    try:
        raw = yaml.safe_load(text) if filename.endswith(".yaml") else json.loads(text)
        return model.model_validate(raw)
    except (ValueError, yaml.YAMLError) as exc:  # pydantic's ValidationError is a ValueError
        raise ValueError(f"lexicon file personas/data/{filename} is invalid: {exc}") from exc


@cache
def demographic_lexicon() -> DemographicLexicon:
    return _load("demographics.json", DemographicLexicon)


@cache
def age_groups() -> tuple[AgeGroup, ...]:
    return demographic_lexicon().groups


def genders() -> tuple[Gender, ...]:
    return demographic_lexicon().genders


def countries() -> tuple[Country, ...]:
    return demographic_lexicon().countries


def country(name: str) -> Country:
    """The lexicon entry for a country name; unknown names list the valid ones."""
    for entry in countries():
        if entry.name == name:
            return entry
    valid = ", ".join(c.name for c in countries())
    raise KeyError(f"unknown country {name!r}; the lexicon has: {valid}")


def same_country_probability() -> float:
    return demographic_lexicon().same_country_probability


@cache
def persona_categories() -> tuple[PersonaCategory, ...]:
    return _load("persona_categories.json", _PersonaCategoryFile).categories


@cache
def human_attribute_pool() -> AttributePool:
    return _load("human_attributes.yaml", AttributePool)


@cache
def _first_name_file() -> _FirstNameFile:
    lexicon: _FirstNameFile = _load("first_names.json", _FirstNameFile)
    missing = [
        f"{c.name}/{g}"
        for c in countries()
        for g in genders()
        if g not in lexicon.names.get(c.name, {})
    ]
    if missing:
        raise ValueError(
            f"personas/data/first_names.json has no names for {missing}; "
            "re-run scripts/extract_names.py"
        )
    return lexicon


def _name_list(country_name: str, gender: str) -> NameList:
    per_gender = _first_name_file().names.get(country(country_name).name, {})
    if gender not in per_gender:
        raise KeyError(f"no first names for gender {gender!r}; use one of {genders()}")
    return per_gender[gender]


def first_names(country_name: str, gender: str) -> tuple[str, ...]:
    """Latin-script first names for people born in ``country_name``, best-ranked first."""
    return _name_list(country_name, gender).names


def first_name_sources(country_name: str, gender: str) -> dict[str, int]:
    """How many of that list's names came from each source (e.g. Latin script, romanised)."""
    return dict(_name_list(country_name, gender).sources)


def first_name_selection(country_name: str, gender: str) -> dict[str, Any]:
    """How that list was cut: candidates examined, kept, dropped by each rule, where it stopped."""
    return dict(_name_list(country_name, gender).selection)


def first_names_metadata() -> dict[str, Any]:
    """Where the name lexicon came from: names-dataset version, licence, selection policy."""
    return dict(_first_name_file().metadata)
