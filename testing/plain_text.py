"""Plain-text answers for the stepwise strategy's requests, as a well-behaved small model
would give them: the fake endpoint's handler for ``llm.strategy: stepwise`` runs.

The request is recognised by what its last message asks for (each stepwise prompt ends
with its own instruction), and the answer names the person where the prompt does.
"""

from __future__ import annotations

import re
from typing import Any

from mcu_sim.testing.scripted import scripted_answer

_NAME = re.compile(r"(?:My name is|^)\s*([A-Z][a-z]+)[ .]", re.M)


def _ask(body: dict[str, Any]) -> str:
    return body["messages"][-1]["content"]


def plain_answer(body: dict[str, Any]) -> str:
    """One line of English answering a stepwise request (no JSON, no schema); a request
    with a schema (the text-safety judge keeps one) gets the scripted JSON answer."""
    if body.get("response_format"):
        return scripted_answer(body)
    ask = _ask(body)
    last = ask.strip().splitlines()[-1]
    match = re.search(r"(?:about|to|of|by) ([A-Z][a-z]+)\b", last)
    name = match.group(1) if match else "Sam"
    if "one to three words" in last:
        return "evening dance classes"
    if "Finish this sentence" in last:
        frame = re.search(r'"(.+?) \.\.\."', last)
        return f"{frame.group(1) if frame else 'I'} spend my evenings at the dance studio."
    if last.startswith("Retell"):
        return (
            "She loves to dance and practices every evening. Her friends often join her at "
            "the studio. She hopes to perform on a real stage one day."
        )
    if "says about their" in last:
        return "I love dancing with my friends at the studio on weekends."
    if "happens to" in last:
        return f"{name} goes to a small dance show downtown with a friend."
    if "in between" in last:
        return f"{name} practiced the new steps every evening after work."
    if 'starting with "A photo of"' in last:
        return "A photo of a bright dance studio with a wooden floor and tall windows."
    if 'starting with "To"' in last:
        return "To show the assistant how lovely the evening was."
    if "next message of the AI assistant" in last:
        return "That sounds wonderful! What did you enjoy most about it?"
    if "next message of" in last:
        return "I went to the dance show and loved every minute of it."
    return "I am not sure what you mean, but I am happy to help."
