"""Stepwise device role: one album photo description per request, its category drawn by
code (and named in the request, so the photo fits it)."""

from __future__ import annotations

import random

from mcu_sim.agents.base import RoleCall
from mcu_sim.agents.device import device_model
from mcu_sim.agents.llm.client import Completion
from mcu_sim.agents.stepwise.text import PHOTO_STARTS, Pieces, ask_text
from mcu_sim.personas.schema import DeviceImage

# The fallback rule: a plain photo of the category (the model's own words preferred).
FALLBACKS = {
    "selfie": "A selfie taken outdoors on a bright day.",
    "past memory": "A photo of an old family picture from many years ago.",
    "landmark": "A photo of a famous old building in the city centre.",
    "animal": "A photo of a small dog sleeping in the sun.",
    "art": "A photo of a colourful painting on a gallery wall.",
    "celebrity": "A photo of a singer on stage at a concert.",
    "nature": "A photo of green hills under a blue sky.",
    "food": "A photo of a plate of fresh noodles on a wooden table.",
    "drink": "A photo of a cup of coffee next to a window.",
    "sport": "A photo of a football match in a small stadium.",
    "family": "A photo of a family dinner around a big table.",
    "friends": "A photo of friends laughing together in a park.",
    "travel": "A photo of a train station on a sunny morning.",
    "work": "A photo of a tidy desk with a laptop and notes.",
    "hobby": "A photo of tools and materials laid out for a hobby.",
}


# The categories a stepwise album draws from (free text in the schema; these have fallbacks).
ALBUM_CATEGORIES = tuple(FALLBACKS)


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
            fallback=FALLBACKS.get(category, "A photo of a sunny afternoon outdoors."),
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
