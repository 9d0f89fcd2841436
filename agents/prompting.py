"""Prompt templates: Jinja files in ``agents/prompts`` with a version and two parts.

A template file starts with ``{# version: N #}`` and separates the system part from the
user part with a line ``---user---``. The recorded version is ``N+<hash of the file>`` so an
edit without a version bump still changes cache keys and episode metadata.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import jinja2

VERSION_PATTERN = re.compile(r"\{#\s*version:\s*([\w.\-]+)\s*#\}")
SEPARATOR = "---user---"

_env = jinja2.Environment(
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=False,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)


@dataclass(frozen=True)
class Prompt:
    name: str
    version: str
    system: jinja2.Template
    user: jinja2.Template

    def render(self, **variables: Any) -> list[dict[str, str]]:
        """The chat messages for these variables; a missing variable is an error."""
        return [
            {"role": "system", "content": self.system.render(**variables).strip()},
            {"role": "user", "content": self.user.render(**variables).strip()},
        ]


@cache
def load_prompt(name: str) -> Prompt:
    text = resources.files("mcu_sim.agents").joinpath("prompts", f"{name}.j2").read_text()
    match = VERSION_PATTERN.search(text)
    if not match:
        raise ValueError(f"prompt {name}.j2 has no '{{# version: N #}}' header")
    if SEPARATOR not in text:
        raise ValueError(f"prompt {name}.j2 has no '{SEPARATOR}' line")
    system, user = text.split(SEPARATOR, 1)
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return Prompt(
        name=name,
        version=f"{match.group(1)}+{digest}",
        system=_env.from_string(VERSION_PATTERN.sub("", system, count=1)),
        user=_env.from_string(user),
    )
