"""How a personalized text-to-image prompt names the person: ``<class word> img``.

PhotoMaker replaces the class word before its trigger word with the identity of the face
images, so its prompts must hold that pair exactly once. The rule lives here, below the
planner (which asks the model for such prompts) and the PhotoMaker tool (which refuses
others), so neither imports the other.
"""

from __future__ import annotations

import re

TRIGGER_WORD = "img"


def check_trigger_prompt(prompt: str, trigger_word: str = TRIGGER_WORD) -> None:
    """Raise ``ValueError`` unless ``prompt`` contains exactly one ``<class word> <trigger>``."""
    trigger = re.escape(trigger_word)
    hits = re.findall(rf"(?i)(?:^|(\S+)\s+){trigger}\b", prompt)
    expected = (
        f"PhotoMaker prompts need the subject written as '<class word> {trigger_word}' "
        f"exactly once, e.g. 'a photo of a woman {trigger_word} at the beach'"
    )
    if len(hits) != 1:
        raise ValueError(f"{expected}; found the trigger word {len(hits)} times in {prompt!r}")
    if not hits[0] or not re.search(r"\w", hits[0]):
        raise ValueError(f"{expected}; no class word before {trigger_word!r} in {prompt!r}")
