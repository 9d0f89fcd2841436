"""Schema-valid answers for every role, derived from the request itself.

The fake endpoint (tests, benchmarks, dry runs) calls :func:`scripted_answer` with the
chat-completions request body. The role is read from the JSON-schema name; counts and
enums (album ids, number of events) come from the schema, so the answer always validates.
Content varies with the prompt, so different people get different (if dull) answers.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable
from typing import Any

from mcu_sim.personas.lexicons import DEVICE_IMAGE_CATEGORY_EXAMPLES

WORDS = [
    "garden",
    "morning",
    "market",
    "river",
    "coffee",
    "bicycle",
    "museum",
    "festival",
    "kitchen",
    "violin",
    "library",
    "mountain",
    "harbor",
    "concert",
    "bakery",
    "station",
    "sunset",
    "football",
    "classroom",
    "painting",
]


def _rng(body: dict[str, Any]) -> random.Random:
    blob = json.dumps(body.get("messages", []), sort_keys=True).encode()
    return random.Random(int.from_bytes(hashlib.sha256(blob).digest()[:8], "big"))


def _phrase(rng: random.Random, n: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def schema_of(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(schema name, JSON schema) from a request, whichever structured mode sent it."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        spec = fmt["json_schema"]
        return spec.get("name", ""), spec.get("schema", {})
    for message in body.get("messages", []):
        content = message.get("content", "")
        marker = "JSON schema:\n"
        if marker in content:
            schema = json.loads(content.split(marker, 1)[1].strip().splitlines()[0])
            return schema.get("title", ""), schema
    return "", {}


def _array_bounds(schema: dict[str, Any], field: str) -> tuple[int, int]:
    spec = schema["properties"][field]
    return spec.get("minItems", 1), spec.get("maxItems", spec.get("minItems", 1))


def _persona(rng: random.Random, schema: dict[str, Any], body: dict[str, Any]) -> dict:
    low, high = _array_bounds(schema, "items")
    text = str(body["messages"][-1].get("content", ""))
    asked = re.search(r"Write (\d+) different statements", text)
    count = min(max(low, int(asked.group(1)) if asked else 8), high)
    items = []
    for i in range(count):
        value = f"{rng.choice(WORDS)} {i + 1}"
        items.append({"sentence": f"I really enjoy my {value} every week.", "entity_value": value})
    return {"items": items}


def _commonsense(rng: random.Random, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "routine_habit": f"visit the {rng.choice(WORDS)} on Sundays",
        "characteristic": f"am curious about every {rng.choice(WORDS)}",
        "experience": f"once got lost near a {rng.choice(WORDS)}",
        "goal_plan": f"to open a small {rng.choice(WORDS)} shop",
        "relationship": f"share my {rng.choice(WORDS)} stories with friends",
    }


def _commonsense_answer(rng: random.Random, schema: dict[str, Any]) -> dict[str, Any]:
    return {"answer": f"spend an hour by the {rng.choice(WORDS)} with a friend"}


def _narrative(rng: random.Random, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "narrative": (
            f"Every weekend I walk to the {rng.choice(WORDS)} with my sister. "
            f"Last spring we found an old {rng.choice(WORDS)} there and it changed my plans."
        )
    }


def asked_count(body: dict[str, Any], noun: str, default: int) -> int:
    """The count the prompt asks for ("more than N <noun>") plus one, as a compliant model
    answers; ``default`` when the prompt names none."""
    for message in body["messages"]:  # the prompt, not a repair turn's feedback
        match = re.search(rf"more than (\d+) {noun}", str(message.get("content", "")))
        if match:
            return int(match.group(1)) + 1
    return default


def _events(rng: random.Random, schema: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    low, high = _array_bounds(schema, "events")
    count = min(max(low, asked_count(body, "events", low)), high)
    items = []
    for number in range(1, count + 1):
        items.append(
            {
                "event": f"I visit the {rng.choice(WORDS)} and meet an old friend there.",
                "caused_by": 0 if number == 1 else rng.randint(1, number - 1),
                "time_interval": rng.randint(1, 6),
                "time_unit": "day" if number == 1 else rng.choice(["week", "month"]),
                "experience_op": rng.choice(["add", "add", "update"]),
                "experience": f"I learned to fix a {rng.choice(WORDS)}.",
            }
        )
    return {"events": items}


def _device(rng: random.Random, schema: dict[str, Any]) -> dict[str, Any]:
    count, _ = _array_bounds(schema, "images")
    spec = schema["$defs"]["DeviceItem"]["properties"]["categories"]
    # free text (the paper's example categories, as a model given them answers); an enum
    # when a schema still offers one
    categories = spec["items"].get("enum") or list(DEVICE_IMAGE_CATEGORY_EXAMPLES)
    most = min(2, spec.get("maxItems", 1))
    return {
        "images": [
            {
                "description": f"A photo of a {rng.choice(WORDS)} at the {rng.choice(WORDS)}",
                "categories": rng.sample(categories, rng.randint(1, most)),
            }
            for _ in range(count)
        ]
    }


def _album_choices(schema: dict[str, Any]) -> list[Any]:
    moment = schema["$defs"]["SharingMoment"]["properties"]["image_id_from_mobile"]
    for option in moment.get("anyOf", [moment]):
        if "enum" in option:
            return option["enum"]
        if "const" in option:
            return [option["const"]]
    return ["new"]


def _dialogue(rng: random.Random, schema: dict[str, Any], body: dict[str, Any]) -> dict:
    low, high = _array_bounds(schema, "utterances")
    turns = min(max(low, 8), high)
    utterances = [f"Line {i}: the {_phrase(rng, 4)}." for i in range(1, turns + 1)]
    least, most = _array_bounds(schema, "sharing_moments")
    n_moments = min(max(least, asked_count(body, "image-sharing moments", least)), most)
    album = _album_choices(schema)
    moments = []
    for i in range(n_moments):
        mobile = i % 2 == 0
        ref = rng.choice(album) if mobile else None
        moments.append(
            {
                "after_utterance": rng.randint(2, turns),
                "shared_by": "user",
                "rationale": "to show what happened",
                "image_description": f"a photo of the {_phrase(rng, 2)}",
                "image_source": "mobile" if mobile else "internet",
                "keywords": [rng.choice(WORDS), rng.choice(WORDS)],
                "image_id_from_mobile": ref,
            }
        )
    return {"utterances": utterances, "sharing_moments": moments}


def _summary(rng: random.Random, schema: dict[str, Any]) -> dict[str, Any]:
    return {"summary": f"They talked about the {_phrase(rng, 3)} and shared two photos."}


def _plan(rng: random.Random, schema: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """Keyword routing among the modules the schema offers."""
    spec = schema["properties"]["module"]
    allowed = spec.get("enum") or [spec.get("const")]
    system = body["messages"][0]["content"]
    user = body["messages"][-1]["content"]
    match = re.search(r'exactly as "(.+?) img"', system)
    class_word = match.group(1) if match else "person"
    description = user.split("Image description:", 1)[-1].split("\n", 1)[0].strip()
    lowered = description.lower()
    wanted = "retrieval"
    if "selfie" in lowered or " me " in f" {lowered} ":
        wanted = "personalized_t2i"
    elif "news" in lowered or "latest" in lowered:
        wanted = "web_search"
    module = wanted if wanted in allowed else allowed[0]
    if module == "personalized_t2i":
        return {"module": module, "description": f"a photo of {class_word} img, {description}"}
    return {"module": module, "description": description}


def _rewrite(rng: random.Random, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": f"a clear, well lit photo of a {rng.choice(WORDS)}"}


def _judge(rng: random.Random, schema: dict[str, Any]) -> dict[str, Any]:
    return {"label": "safe", "reason": "an ordinary, friendly conversation"}


def _ratings(rng: random.Random, schema: dict[str, Any]) -> dict[str, Any]:
    """``mcu judge``'s evaluator: a score for each criterion the schema asks about."""
    return {
        name: {"justification": f"the {_phrase(rng, 3)} fits", "score": rng.randint(2, 4)}
        for name in schema.get("properties", {})
    }


def _versus(rng: random.Random, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        name: {"justification": f"the {_phrase(rng, 3)}", "choice": rng.choice(["A", "tie", "B"])}
        for name in schema.get("properties", {})
    }


ROLES: dict[str, Callable[[random.Random, dict[str, Any]], dict[str, Any]]] = {
    "CommonsenseOutput": _commonsense,
    "CommonsenseAnswer": _commonsense_answer,
    "NarrativeOutput": _narrative,
    "DeviceOutput": _device,
    "SummaryOutput": _summary,
    "RewriteOutput": _rewrite,
    "JudgeVerdict": _judge,
    "EpisodeRatings": _ratings,
    "HeadToHead": _versus,
}
SCAN_CUES = ("look", "here", "photo", "picture", "show")
SCAN_TURN = re.compile(r"^\[(\d+)\](?: \(context\))? ([^:]+): (.*)$")
SCAN_RANGE = re.compile(r"turns (\d+) to (\d+)")
SCAN_LIMIT = re.compile(r"at most (\d+)")


def _scan(rng: random.Random, schema: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The scanner (``mcu augment``): picks each turn to decide whose text has a visual cue
    word (``SCAN_CUES``), up to the limit, so tests can work the expected picks out by hand."""
    # the scanner's prompt is the first user message (repair turns come after it)
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    first, last = (int(x) for x in SCAN_RANGE.findall(user)[-1])
    limit = int(SCAN_LIMIT.findall(user)[-1])
    picks = []
    for line in user.splitlines():
        match = SCAN_TURN.match(line)
        if not match or not first <= int(match.group(1)) <= last:
            continue
        number, speaker, text = int(match.group(1)), match.group(2), match.group(3)
        if any(cue in text.lower() for cue in SCAN_CUES) and len(picks) < limit:
            pick = {
                "turn": number,
                "rationale": "the speaker points at something worth seeing",
                "description": f"a photo of the {_phrase(rng, 2)}",
                "keywords": [rng.choice(WORDS)],
            }
            picks.append(
                {**pick, "speaker": speaker} if "moments" in schema["properties"] else pick
            )
    if "moments" in schema["properties"]:
        return {"moments": picks}
    if "reasoning" in schema["properties"]:
        return {
            "reasoning": f"{len(picks)} turn(s) point at something visual.",
            "selections": picks,
        }
    return {"selections": picks}


BODY_ROLES: dict[str, Callable[[random.Random, dict[str, Any], dict[str, Any]], dict]] = {
    "PlanOutput": _plan,
    "EventsOutput": _events,
    "DialogueOutput": _dialogue,
    "PersonaOutput": _persona,
    "ScanOutput": _scan,
    "ScanReasonedOutput": _scan,
    "MomentsOutput": _scan,
}


def register_role(name: str, answer: Callable[[random.Random, dict[str, Any]], dict]) -> None:
    """Let other modules (planner, judge …) add their scripted answers."""
    ROLES[name] = answer


def scripted_object(body: dict[str, Any]) -> dict[str, Any]:
    name, schema = schema_of(body)
    if name in BODY_ROLES:
        return BODY_ROLES[name](_rng(body), schema, body)
    if name not in ROLES:
        known = sorted([*ROLES, *BODY_ROLES])
        raise KeyError(f"no scripted answer for schema {name!r}; known: {known}")
    return ROLES[name](_rng(body), schema)


def scripted_answer(body: dict[str, Any]) -> str:
    """The JSON text a well-behaved model would answer to this request."""
    return json.dumps(scripted_object(body))
