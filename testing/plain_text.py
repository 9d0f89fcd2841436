"""Plain-text answers for the stepwise strategy's requests, as a well-behaved small model
would give them: the fake endpoint's handler for ``llm.strategy: stepwise`` runs.

The request is recognised by what its last message asks for (each stepwise prompt ends
with its own instruction), and the answer names the person where the prompt does.
"""

from __future__ import annotations

import re
from typing import Any

from mcu_sim.testing.scripted import scripted_answer

_NAME_IN_ASK = re.compile(r"(?:to|about|does|that) ([A-Z][a-z]+)\b")


ASSISTANT_LINES = [
    "That sounds wonderful! What did you enjoy most about it?",
    "How lovely. Who else was there with you?",
    "What a beautiful picture. How did it feel to be there?",
]
PERSON_LINES = [
    "I went to the dance show and loved every minute of it.",
    "My sister came along, and we laughed all evening.",
    "It felt like being young again, look at this photo.",
]


def _ask(body: dict[str, Any]) -> str:
    return body["messages"][-1]["content"]


def plain_answer(body: dict[str, Any]) -> str:
    """One line of English answering a stepwise request (no JSON, no schema); a request
    with a schema (the text-safety judge keeps one) gets the scripted JSON answer."""
    if body.get("response_format"):
        return scripted_answer(body)
    system = body["messages"][0]["content"]
    last = _ask(body).strip().splitlines()[-1]
    name = _NAME_IN_ASK.search(last)
    who = name.group(1) if name else "Sam"
    turn = len(body["messages"])  # a different line at each point of the chat
    if system.startswith("You are a friendly AI assistant"):
        return ASSISTANT_LINES[turn % len(ASSISTANT_LINES)]
    if system.startswith("You are "):  # the person, replying to the assistant
        return PERSON_LINES[turn % len(PERSON_LINES)]
    if "Why does" in last:
        return "To show the assistant how lovely the evening was."
    if "says about" in last:
        return "I love dancing with my friends at the studio on weekends."
    if last.startswith("Write another sentence"):
        frame = re.search(r'starting with "(.+?)"', last)
        return f"{frame.group(1) if frame else 'I'} spend my evenings at the dance studio."
    if last.startswith("Retell"):
        return (
            f"{who} loves to dance and practices every evening. Friends often join at the "
            "studio. The dream is to perform on a real stage one day."
        )
    if last.startswith("What happens to"):
        return f"{who} goes to a small dance show downtown with a friend."
    if last.startswith("Describe"):
        return "A photo of a bright dance studio with a wooden floor and tall windows."
    return "I am not sure what you mean, but I am happy to help."
