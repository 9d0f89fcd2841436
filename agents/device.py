"""Device role (STARK §3.7): descriptions of photos already on the person's phone."""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import BaseModel, Field, create_model

from mcu_sim.agents.base import RoleCall, ask
from mcu_sim.agents.llm.client import Completion
from mcu_sim.personas.schema import DeviceImage

PROMPT = "device"
Category = Literal[
    "selfie",
    "past memory",
    "screenshot",
    "landmark",
    "animal",
    "art",
    "celebrity",
    "nature",
    "food",
    "drink",
    "sport",
    "family",
    "friends",
    "travel",
    "work",
    "hobby",
    "document",
    "other",
]


class DeviceItem(BaseModel):
    description: str = Field(min_length=10, max_length=200)
    categories: list[Category] = Field(min_length=1, max_length=3)


@functools.lru_cache(maxsize=64)
def device_model(count: int) -> type[BaseModel]:
    return create_model(
        "DeviceOutput", images=(list[DeviceItem], Field(min_length=count, max_length=count))
    )


async def generate_device_images(
    call: RoleCall, name: str, narrative: str, count: int
) -> tuple[list[DeviceImage], Completion, str]:
    output, completion, version = await ask(
        call, PROMPT, device_model(count), name=name, narrative=narrative, count=count
    )
    images = [
        DeviceImage(
            id=number,
            description=item.description.strip(),
            categories=list(dict.fromkeys(item.categories)),
            added_in_session=0,
        )
        for number, item in enumerate(output.images, start=1)
    ]
    return images, completion, version
