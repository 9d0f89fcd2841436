"""Samplers and lexicons of the simulated person (STARK App. A, Tables 4 and 6)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import unicodedata
from collections import Counter

import pytest

from mcu_sim.personas import lexicons, samplers
from mcu_sim.personas.lexicons import AttributePool
from mcu_sim.personas.schema import Demographics

PAPER_COUNTRIES = [
    "United States of America", "China", "Japan", "India", "United Arab Emirates", "France",
    "Germany", "Italy", "South Korea", "Saudi Arabia", "Kazakhstan", "Brazil", "Mexico",
    "Egypt", "Argentina", "Russia", "United Kingdom", "Spain", "Canada",
]  # fmt: skip
DRAWS = 10_000
# Chi-square critical values at p = 0.001: a fair sampler fails about once in a thousand
# seeds (and the seed is fixed); a sampler that skews any bucket by ~10 % fails.
CHI2_CRITICAL = {1: 10.83, 7: 24.32, 17: 40.79, 18: 42.31}


def chi_square(counts: Counter, categories: list) -> float:
    expected = sum(counts.values()) / len(categories)
    return sum((counts[c] - expected) ** 2 / expected for c in categories)


def is_latin_name(name: str) -> bool:
    return all(ch in " -'" or "LATIN" in unicodedata.name(ch, "") for ch in name)


@pytest.fixture(scope="module")
def draws() -> list[Demographics]:
    rng = random.Random(20240501)
    return [samplers.sample_demographics(rng) for _ in range(DRAWS)]


# ------------------------------------------------------------------ lexicons


def test_demographic_lexicon_matches_the_paper() -> None:
    assert [g.label for g in lexicons.age_groups()] == [
        "10-20", "20-30", "30-40", "40-50", "50-60", "60-70", "70-80", "80-90",
    ]  # fmt: skip
    assert lexicons.genders() == ("male", "female")
    assert [c.name for c in lexicons.countries()] == PAPER_COUNTRIES
    assert lexicons.same_country_probability() == 0.7
    assert lexicons.country("United Kingdom").phrase == "the United Kingdom"
    assert lexicons.country("Japan").phrase == "Japan"


def test_unknown_country_lists_the_valid_ones() -> None:
    with pytest.raises(KeyError, match=r"unknown country 'Atlantis'.*South Korea"):
        lexicons.country("Atlantis")


def test_fifty_persona_categories_with_both_residence_rows() -> None:
    categories = lexicons.persona_categories()
    assert len(categories) == 50
    assert len(set(categories)) == 50
    residence = [c.entity_key for c in categories if c.category == "Location ▷ Residence"]
    assert residence == ["city-state", "country"]
    assert categories[0].category == "School ▷ Name"
    assert categories[0].entity_key == "school name"
    assert categories[-1].entity_key == "science"


def test_first_names_cover_every_country_and_gender_in_latin_script() -> None:
    for country in lexicons.countries():
        for gender in lexicons.genders():
            names = lexicons.first_names(country.name, gender)
            assert len(names) >= 30, (country.name, gender)
            assert len(set(names)) == len(names)
            bad = [n for n in names if not is_latin_name(n)]
            assert not bad, (country.name, gender, bad)
            sources = lexicons.first_name_sources(country.name, gender)
            assert sum(sources.values()) == len(names)
    # spot checks that the lists are the country's and the gender's
    assert "Jiyoung" in lexicons.first_names("South Korea", "female")
    assert "Takashi" in lexicons.first_names("Japan", "male")
    assert "Takashi" not in lexicons.first_names("Japan", "female")
    assert "Mahmoud" in lexicons.first_names("Egypt", "male")


def test_name_lexicon_records_its_origin() -> None:
    meta = lexicons.first_names_metadata()
    assert meta["names_dataset_version"]
    assert "MIT" in meta["names_dataset_licence"]
    assert meta["generator"] == "scripts/extract_names.py"
    with pytest.raises(KeyError, match="gender 'other'"):
        lexicons.first_names("Japan", "other")


def test_broken_attribute_pool_is_rejected_with_its_reason() -> None:
    base = {"version": 1, "shots": ["a photo"]}
    with pytest.raises(ValueError, match="'tops' excludes unknown"):
        AttributePool.model_validate(
            {**base, "attributes": {"tops": {"values": ["a shirt"], "excludes": ["shirts"]}}}
        )
    with pytest.raises(ValueError, match="either 'values' or 'parts'"):
        AttributePool.model_validate({**base, "attributes": {"hair": {}}})
    with pytest.raises(ValueError, match="template never uses"):
        AttributePool.model_validate(
            {**base, "attributes": {"hair": {"parts": {"color": ["red"]}, "template": "hair"}}}
        )


# ------------------------------------------------------------------ demographics


def test_age_groups_genders_and_countries_are_near_uniform(draws: list[Demographics]) -> None:
    groups = [g.label for g in lexicons.age_groups()]
    by_group = Counter(d.age_group for d in draws)
    assert chi_square(by_group, groups) < CHI2_CRITICAL[7], by_group
    by_gender = Counter(d.gender for d in draws)
    assert chi_square(by_gender, ["male", "female"]) < CHI2_CRITICAL[1], by_gender
    by_birthplace = Counter(d.birthplace for d in draws)
    assert chi_square(by_birthplace, PAPER_COUNTRIES) < CHI2_CRITICAL[18], by_birthplace
    by_residence = Counter(d.residence for d in draws)
    assert chi_square(by_residence, PAPER_COUNTRIES) < CHI2_CRITICAL[18], by_residence
    # and no bucket is far off, whatever the others do
    for counts, n in ((by_group, 8), (by_gender, 2), (by_birthplace, 19)):
        assert all(abs(c - DRAWS / n) < 0.15 * DRAWS / n for c in counts.values()), counts


def test_residence_is_the_birthplace_seventy_percent_of_the_time(
    draws: list[Demographics],
) -> None:
    same = sum(d.birthplace == d.residence for d in draws) / DRAWS
    assert abs(same - 0.7) < 0.02, same
    movers = [d for d in draws if d.birthplace != d.residence]
    # a mover's new country is any of the other 18, uniformly
    from_japan = Counter(d.residence for d in movers if d.birthplace == "Japan")
    others = [c for c in PAPER_COUNTRIES if c != "Japan"]
    assert set(from_japan) <= set(others)
    assert chi_square(Counter(d.residence for d in movers), PAPER_COUNTRIES) < CHI2_CRITICAL[18]


def test_every_age_lies_in_its_group_and_reaches_both_bounds(
    draws: list[Demographics],
) -> None:
    for group in lexicons.age_groups():
        ages = [d.age for d in draws if d.age_group == group.label]
        assert all(group.low <= a <= group.high for a in ages)
        assert min(ages) == group.low and max(ages) == group.high  # bounds are inclusive
        assert len(set(ages)) == group.high - group.low + 1


def test_names_come_from_the_birthplace_and_gender(draws: list[Demographics]) -> None:
    for d in draws:
        assert d.name in lexicons.first_names(d.birthplace, d.gender), d
        assert is_latin_name(d.name)
    # draws spread over each list instead of repeating its first name
    korean_women = {d.name for d in draws if d.birthplace == "South Korea" and d.gender == "female"}
    assert len(korean_women) > 25


# ------------------------------------------------------------------ determinism


def test_same_seed_same_person_different_seed_different_person() -> None:
    assert samplers.sample_person(42) == samplers.sample_person(42)
    people = {
        (p.demographics.model_dump_json(), p.face_prompt, p.persona_category.category)
        for p in (samplers.sample_person(seed) for seed in range(300))
    }
    assert len(people) == 300
    assert samplers.sample_person(1).demographics != samplers.sample_person(2).demographics


def test_fields_come_from_independent_substreams() -> None:
    person = samplers.sample_person(7)
    rng = random.Random("7:demographics")
    assert person.demographics == samplers.sample_demographics(rng)
    assert person.persona_category == samplers.sample_persona_category(
        random.Random("7:persona_category")
    )


def test_samplers_leave_the_global_random_alone() -> None:
    random.seed(123)
    state = random.getstate()
    samplers.sample_person(5)
    samplers.sample_demographics(random.Random(5))
    assert random.getstate() == state


def test_person_is_identical_in_a_fresh_process_and_imports_stay_light() -> None:
    code = (
        "import json, sys; from mcu_sim.personas.samplers import sample_person; "
        "print(sample_person(2024).model_dump_json()); "
        "print(json.dumps(sorted(m for m in ('torch', 'names_dataset', 'diffusers') "
        "if m in sys.modules)))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.splitlines()
    assert json.loads(out[0]) == json.loads(samplers.sample_person(2024).model_dump_json())
    assert json.loads(out[1]) == []


# ------------------------------------------------------------------ persona category


def test_persona_categories_are_drawn_uniformly() -> None:
    rng = random.Random(9)
    rows = lexicons.persona_categories()
    counts = Counter(rows.index(samplers.sample_persona_category(rng)) for _ in range(DRAWS))
    assert len(counts) == 50
    # 49 degrees of freedom: critical value 85.35 at p = 0.001
    assert chi_square(counts, list(range(50))) < 85.35


# ------------------------------------------------------------------ face


def _value_entry(attribute: str, phrase: str) -> list:
    pool = lexicons.human_attribute_pool()
    entry = next(a for a in pool.attributes if a.name == attribute)
    return [v for v in entry.values if v.value == phrase]


def test_face_attributes_combine_plausibly() -> None:
    headwear = {"hat", "headband", "headscarf", "veil"}
    accessories = ["bag", "hat", "belt", "scarf", "headband", "headscarf", "veil", "socks", "tie"]
    present: Counter = Counter()
    n = 4000
    for seed in range(n):
        person = samplers.sample_person(seed)
        d, attrs = person.demographics, person.face_attributes
        present.update(attrs.keys())
        for key in ("shot", "style", "body_shape", "background", "hair"):
            assert attrs.get(key), (key, attrs)
        dressed = "special_clothing" in attrs or "one_piece_outfit" in attrs
        assert dressed or ("top" in attrs and "bottom" in attrs), attrs
        if "one_piece_outfit" in attrs:
            assert not {"top", "bottom", "tie"} & set(attrs), attrs
        if "special_clothing" in attrs:
            assert not {"one_piece_outfit", "top", "coat", "bottom", "tie"} & set(attrs), attrs
        assert len(headwear & set(attrs)) <= 1, attrs
        for key, phrase in attrs.items():
            if key in ("shot", "hair"):
                continue
            entries = _value_entry(key, phrase)
            assert entries and any(e.allows(d.age, d.gender) for e in entries), (key, phrase, d)
        if d.gender == "male":
            assert "headscarf" not in attrs and "veil" not in attrs
        if d.age > 18:
            assert "school uniform" not in attrs.get("special_clothing", "")
    # optional accessories stay rare; garments that need to be there mostly are
    for key in accessories:
        assert present[key] < 0.2 * n, (key, present[key])
    assert present["top"] > 0.8 * n
    assert 0.01 * n < present["one_piece_outfit"] < 0.2 * n
    assert present["special_clothing"] > 0


def test_face_prompt_names_the_person_and_every_attribute() -> None:
    demographics = Demographics(
        age_group="80-90", age=81, gender="female", birthplace="United Kingdom",
        residence="Spain", name="Claire",
    )  # fmt: skip
    attrs = {
        "shot": "a waist-up photo",
        "style": "natural light portrait photography",
        "body_shape": "slim",
        "background": "against a plain white wall",
        "hair": "short wavy gray hair",
        "one_piece_outfit": "a navy wrap dress",
        "coat": "a camel wool overcoat",
        "bag": "a canvas tote bag",
    }
    prompt = samplers.face_prompt(attrs, demographics)
    assert prompt == (
        "A waist-up photo of an 81-year-old woman from the United Kingdom, slim, with short "
        "wavy gray hair, wearing a navy wrap dress and a camel wool overcoat, against a plain "
        "white wall, natural light portrait photography, with a canvas tote bag."
    )
    with pytest.raises(ValueError, match="unknown face attributes \\['wings'\\]"):
        samplers.face_prompt({**attrs, "wings": "white"}, demographics)


def test_sampled_face_prompt_contains_its_attributes() -> None:
    person = samplers.sample_person(11)
    for value in person.face_attributes.values():
        assert value.lower() in person.face_prompt.lower()
    assert f"{person.demographics.age}-year-old" in person.face_prompt


@pytest.mark.images
def test_face_prompts_fit_the_clip_text_window() -> None:
    """SDXL's CLIP encoders keep 77 tokens: what describes the person must fit."""
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer()
    n, over = 2000, 0
    for seed in range(n):
        person = samplers.sample_person(seed)
        without_accessories = samplers.face_prompt(
            {k: v for k, v in person.face_attributes.items() if k not in samplers.ACCESSORIES},
            person.demographics,
        )
        assert len(tokenizer.encode(without_accessories)) + 2 <= 77, without_accessories
        over += len(tokenizer.encode(person.face_prompt)) + 2 > 77
    assert over < 0.02 * n


# ------------------------------------------------------------------ class word and templates


@pytest.mark.parametrize(
    ("age", "gender", "word"),
    [
        (5, "male", "boy"), (12, "female", "girl"), (13, "male", "teenage boy"),
        (17, "female", "teenage girl"), (18, "male", "man"), (64, "female", "woman"),
        (65, "male", "old man"), (90, "female", "old woman"),
    ],
)  # fmt: skip
def test_class_word(age: int, gender: str, word: str) -> None:
    assert samplers.class_word(age, gender) == word


def test_class_word_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="gender must be 'male' or 'female'"):
        samplers.class_word(30, "robot")
    with pytest.raises(ValueError, match="non-negative"):
        samplers.class_word(-1, "male")


DEMO = Demographics(
    age_group="40-50", age=42, gender="female", birthplace="Japan", residence="United Kingdom",
    name="Yuki",
)  # fmt: skip
DEMO_SENTENCE = (
    "I am a 42-year-old female. I was born in Japan, I currently reside in the United Kingdom."
)
PERSONA = "I work as a pastry chef in a small bakery."
HEAD = f"My name is Yuki. {DEMO_SENTENCE} {PERSONA}"


@pytest.mark.parametrize(
    ("relation", "commonsense", "expected"),
    [
        ("routine_habit", "wake up before dawn to bake bread",
         f"{HEAD} I regularly wake up before dawn to bake bread."),
        ("characteristic", "am patient and detail-oriented",
         f"{HEAD} I am patient and detail-oriented."),
        ("experience", "trained at a culinary school in Osaka",
         "My name is Yuki. I trained at a culinary school in Osaka. "
         f"Now, {DEMO_SENTENCE} {PERSONA}"),
        ("goal_plan", "to open my own patisserie",
         f"{HEAD} I plan to open my own patisserie."),
        ("relationship", "often share my pastries with my neighbours",
         f"{HEAD} So, I often share my pastries with my neighbours."),
    ],
)  # fmt: skip
def test_table_4_templates(relation: str, commonsense: str, expected: str) -> None:
    assert samplers.demographic_sentence(DEMO) == DEMO_SENTENCE
    assert samplers.sentence_form(relation, "Yuki", DEMO, PERSONA, commonsense) == expected


def test_templates_do_not_double_a_frame_the_model_wrote() -> None:
    form = samplers.sentence_form(
        "routine_habit", "Yuki", DEMO, "I work as a pastry chef", "I regularly bake bread."
    )
    assert form.endswith("I work as a pastry chef. I regularly bake bread.")
    form = samplers.sentence_form("goal_plan", "Yuki", DEMO, PERSONA, "I plan to travel.")
    assert form.endswith("I plan to travel.")
    form = samplers.sentence_form("relationship", "Yuki", DEMO, PERSONA, "So, I call my mother")
    assert form.endswith("So, I call my mother.")


def test_templates_reject_bad_input() -> None:
    with pytest.raises(ValueError, match=r"unknown relation 'hobby'.*routine_habit"):
        samplers.sentence_form("hobby", "Yuki", DEMO, PERSONA, "bake")
    with pytest.raises(ValueError, match="commonsense is empty"):
        samplers.sentence_form("experience", "Yuki", DEMO, PERSONA, " . ")


def test_demographic_sentence_reads_as_english() -> None:
    old = DEMO.model_copy(update={"age_group": "80-90", "age": 80, "residence": "Japan"})
    assert samplers.demographic_sentence(old).startswith("I am an 80-year-old female.")
    american = DEMO.model_copy(update={"birthplace": "United States of America"})
    assert "born in the United States of America" in samplers.demographic_sentence(american)


def test_the_nodes_validate_every_state_value_they_read() -> None:
    """No cache of validated values (an ``id()``-keyed one was wrong once a value died and
    its id was reused): a value edited in place between two reads is checked again."""
    from pydantic import ValidationError

    from mcu_sim.graphs import nodes
    from mcu_sim.personas.schema import DeviceImage

    raw = {
        "age_group": "25-34",
        "age": 30,
        "gender": "female",
        "birthplace": "Lyon",
        "residence": "Oslo",
        "name": "Ines",
    }
    state = {"demographics": raw}
    assert nodes._demo(state) == Demographics.model_validate(raw)
    raw["age"] = 400  # the same dict, now invalid: the next read says so
    with pytest.raises(ValidationError):
        nodes._demo(state)
    raw["age"] = 31
    assert nodes._demo(state).age == 31
    with pytest.raises(ValidationError):  # the same dict read as another model is checked
        nodes._validated(DeviceImage, raw)


def test_the_session_node_dumps_turns_as_each_turn_dumps_itself() -> None:
    """The session record's turns come from one ``TypeAdapter`` call: the same JSON data
    (key order, None fields, the nested sharing moment) as a ``model_dump`` per turn."""
    from mcu_sim.graphs import nodes
    from mcu_sim.personas.schema import SharingInfo, Turn

    turns = [
        Turn(id=1, speaker="Ines", utterance="I finally ran the marathon!"),
        Turn(
            id=2,
            speaker="Ines",
            utterance="Look at this",
            sharing=SharingInfo(
                rationale="proud of it",
                image_description="a runner at the finish line",
                image_source="mobile",
                keywords=["marathon", "finish"],
                image_id_from_mobile="new",
            ),
            request_id="s1-t2",
        ),
        Turn(id=3, speaker="AI", utterance=""),
    ]
    dumped = nodes._TURNS.dump_python(turns, mode="json")
    assert dumped == [t.model_dump(mode="json") for t in turns]
    assert [list(d) for d in dumped] == [list(t.model_dump(mode="json")) for t in turns]
    assert dumped[1]["sharing"]["keywords"] == ["marathon", "finish"]
    assert dumped[0]["sharing"] is None
