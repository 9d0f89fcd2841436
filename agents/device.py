"""Device role (STARK §3.7): descriptions of photos already on the person's phone.

Categories are free text, as in the paper (its album holds 467K of them, §4.2): the prompt
gives the paper's examples (:data:`DEVICE_IMAGE_CATEGORY_EXAMPLES`) and a few-shot album,
the schema bounds each category to a short phrase, and code normalises them (trimmed,
lower case, spaces collapsed, duplicates dropped) so the report counts "Selfie" and
"selfie " as one.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints, create_model

from mcu_sim.agents.base import RoleCall, ask
from mcu_sim.agents.llm.client import Completion
from mcu_sim.personas.lexicons import DEVICE_IMAGE_CATEGORY_EXAMPLES
from mcu_sim.personas.schema import DeviceImage

PROMPT = "device"
CATEGORY_MAX_LENGTH = 32
CATEGORIES_PER_PHOTO = 3

Category = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=2, max_length=CATEGORY_MAX_LENGTH)
]


class DeviceItem(BaseModel):
    description: str = Field(min_length=10, max_length=200)
    categories: list[Category] = Field(min_length=1, max_length=CATEGORIES_PER_PHOTO)


@functools.lru_cache(maxsize=64)
def device_model(count: int) -> type[BaseModel]:
    return create_model(
        "DeviceOutput", images=(list[DeviceItem], Field(min_length=count, max_length=count))
    )


def normalize_categories(categories: list[str]) -> list[str]:
    """Lower case, single spaces, no surrounding punctuation, first occurrence kept."""
    out = []
    for category in categories:
        text = re.sub(r"\s+", " ", category).strip(" .,;:'\"").lower()
        if text:
            out.append(text)
    return list(dict.fromkeys(out))


async def generate_device_images(
    call: RoleCall, name: str, narrative: str, count: int
) -> tuple[list[DeviceImage], Completion, str]:
    output, completion, version = await ask(
        call,
        PROMPT,
        device_model(count),
        name=name,
        narrative=narrative,
        count=count,
        category_examples=DEVICE_IMAGE_CATEGORY_EXAMPLES,
    )
    images = [
        DeviceImage(
            id=number,
            description=item.description.strip(),
            categories=normalize_categories(item.categories),
            added_in_session=0,
        )
        for number, item in enumerate(output.images, start=1)
    ]
    return images, completion, version
