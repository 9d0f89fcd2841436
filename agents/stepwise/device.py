"""Stepwise device role: one album photo description per request, its category drawn by
code (and named in the request, so the photo fits it)."""

from __future__ import annotations

import random
import typing

from mcu_sim.agents.base import RoleCall
from mcu_sim.agents.device import Category, device_model
from mcu_sim.agents.llm.client import Completion
from mcu_sim.agents.stepwise.text import PHOTO_STARTS, Pieces, ask_text
from mcu_sim.personas.schema import DeviceImage

# The categories a phone album is made of (document and screenshot photos describe badly).
ALBUM_CATEGORIES = tuple(
    c for c in typing.get_args(Category) if c not in ("other", "document", "screenshot")
)


async def generate_device_images(
    call: RoleCall, name: str, narrative: str, count: int
) -> tuple[list[DeviceImage], Completion, str]:
    pieces = Pieces("device")
    categories = random.Random(call.seed).sample(ALBUM_CATEGORIES, count)
    items = []
    for number, category in enumerate(categories, start=1):
        description = await ask_text(
            call,
            pieces,
            "stepwise_photo",
            fallback=f"A photo of {name}'s {category} moments.",
            what=f"album photo {number}",
            max_tokens=45,
            min_words=4,
            max_sentences=1,
            max_chars=190,
            starts=PHOTO_STARTS,
            context=f"About {name}: {narrative}",
            subject=f"a {category} photo on {name}'s phone",
        )
        items.append({"description": description, "categories": [category]})
    output = device_model(count).model_validate({"images": items})
    images = [
        DeviceImage(
            id=number,
            description=item.description.strip(),
            categories=list(dict.fromkeys(item.categories)),
            added_in_session=0,
        )
        for number, item in enumerate(output.images, start=1)
    ]
    return images, pieces.completion(output), pieces.version()
