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
import jinja2.meta

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
    # the text of a part that uses no variable (most system parts), rendered once: Jinja
    # makes a new context for every render, which cost more than the text itself
    fixed_system: str | None = None
    fixed_user: str | None = None

    def render(self, **variables: Any) -> list[dict[str, str]]:
        """The chat messages for these variables; a missing variable is an error."""
        system = self.fixed_system
        if system is None:
            system = _render(self.system, variables)
        user = self.fixed_user
        if user is None:
            user = _render(self.user, variables)
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _render(template: jinja2.Template, variables: dict[str, Any]) -> str:
    return template.render(**variables).strip()


def _fixed_text(source: str, template: jinja2.Template) -> str | None:
    if jinja2.meta.find_undeclared_variables(_env.parse(source)):
        return None
    return template.render().strip()


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
    system = VERSION_PATTERN.sub("", system, count=1)
    system_template, user_template = _env.from_string(system), _env.from_string(user)
    return Prompt(
        name=name,
        version=f"{match.group(1)}+{digest}",
        system=system_template,
        user=user_template,
        fixed_system=_fixed_text(system, system_template),
        fixed_user=_fixed_text(user, user_template),
    )
