"""Regenerate the small image database shipped in ``tools/data/image_db``.

The photographs come from scikit-image's bundled sample data, keeping only those its
documentation marks public domain or CC0 (each with its source below). They are shrunk to
at most 512 px and saved as JPEG, each with a caption we wrote (``<id>.txt``) and its
licence and source (``<id>.json``); then the captions are embedded with all-MiniLM-L6-v2 so
the database answers offline without CLIP weights.

scikit-image is needed only here, not at run time::

    flock /tmp/mcu-pip.lock .venv/bin/pip install scikit-image
    .venv/bin/python scripts/build_embedded_db.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from mcu_sim.tools.base import open_image
from mcu_sim.tools.retrieval import build_index, default_database_dir

MAX_SIDE = 512
JPEG_QUALITY = 85


@dataclass(frozen=True)
class Sample:
    id: str
    file: str  # inside skimage/data
    caption: str
    license: str
    source: str
    attribution: str


SAMPLES = [
    Sample(
        "astronaut",
        "astronaut.png",
        "Portrait of a smiling astronaut in an orange flight suit holding her helmet, "
        "with a flag and a model of the space shuttle behind her.",
        "Public domain",
        "https://flic.kr/p/r9qvLn",
        "NASA (astronaut Eileen Collins)",
    ),
    Sample(
        "cameraman",
        "camera.png",
        "Black and white photo of a man in a dark coat filming with a camera on a tripod "
        "in an open field, buildings in the distance.",
        "CC0",
        "scikit-image sample data (skimage.data.camera)",
        "Lav Varshney",
    ),
    Sample(
        "brick_pavement",
        "brick.png",
        "Grey brick pavement laid in long staggered rows, seen from above.",
        "CC0",
        "https://cc0textures.com/view.php?tex=Bricks25",
        "CC0Textures",
    ),
    Sample(
        "grass",
        "grass.png",
        "Close-up of a lawn: thin grass blades in black and white.",
        "CC0",
        "https://www.deviantart.com/linolafett/art/Grass-01-434853879",
        "linolafett",
    ),
    Sample(
        "gravel",
        "gravel.png",
        "Close-up of a path covered in small grey gravel stones.",
        "CC0",
        "https://cc0textures.com/view.php?tex=Gravel04",
        "CC0Textures",
    ),
    Sample(
        "wall_clock",
        "clock_motion.png",
        "A round wall clock on a plain grey wall, blurred because the camera moved.",
        "Public domain",
        "scikit-image sample data (skimage.data.clock)",
        "Stefan van der Walt",
    ),
    Sample(
        "cat",
        "chelsea.png",
        "Close-up of a ginger tabby cat's face with big green-yellow eyes and white whiskers.",
        "CC0",
        "scikit-image sample data (skimage.data.chelsea)",
        "Stefan van der Walt",
    ),
    Sample(
        "coffee",
        "coffee.png",
        "A cup of espresso on a red saucer with a small spoon, on a wooden cafe table.",
        "CC0",
        "scikit-image sample data (skimage.data.coffee), courtesy of Pikolo Espresso Bar",
        "Rachel Michetti",
    ),
    Sample(
        "deep_space",
        "hubble_deep_field.jpg",
        "Telescope view of deep space: thousands of small colourful galaxies on a black sky.",
        "Public domain",
        "http://hubblesite.org/newscenter/archive/releases/2012/37/image/a/",
        "NASA (Hubble eXtreme Deep Field)",
    ),
    Sample(
        "retina",
        "retina.jpg",
        "Medical photograph of the back of a human eye: an orange retina with red blood "
        "vessels spreading from the optic disc.",
        "CC0 1.0",
        "https://commons.wikimedia.org/wiki/File:Fundus_photograph_of_normal_left_eye.jpg",
        "Mikael Häggström",
    ),
    Sample(
        "rocket_launch_pad",
        "rocket.jpg",
        "A white rocket standing on its launch pad at dusk, lit by floodlights, between "
        "tall lightning towers.",
        "Public domain",
        "https://www.flickr.com/photos/spacexphotos/16511594820/",
        "SpaceX (Falcon 9 with DSCOVR)",
    ),
    Sample(
        "horse_silhouette",
        "horse.png",
        "Black silhouette of a standing horse on a white background.",
        "CC0",
        "http://openclipart.org/detail/158377/horse-by-marauder",
        "Andreas Preuss (marauder)",
    ),
    Sample(
        "handwritten_notes",
        "text.png",
        "Handwritten maths notes in pencil on a sheet of paper, black and white.",
        "Public domain",
        "https://en.wikipedia.org/wiki/File:Corner.png",
        "Wikipedia contributor (via scikit-image)",
    ),
]


def skimage_data_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        sys.exit(
            "scikit-image is not installed; install it for this script only:\n"
            "  flock /tmp/mcu-pip.lock .venv/bin/pip install scikit-image"
        )
    return Path(spec.origin).parent / "data"


def shrink(source: Path) -> Image.Image:
    with open_image(source) as img:
        img.load()
        if img.mode in ("RGBA", "LA", "P"):
            rgba = img.convert("RGBA")
            flat = Image.new("RGB", rgba.size, "white")
            flat.paste(rgba, mask=rgba.getchannel("A"))
            img = flat
        elif img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        return img.copy()


def licence_file(samples: list[Sample]) -> str:
    lines = [
        "# Images in this database",
        "",
        "Sample photographs bundled with scikit-image, each released into the public domain",
        "or under CC0 as stated in scikit-image's documentation; resized to at most 512 px.",
        "Captions were written for mcu-sim and are released under CC0.",
        "",
        "| id | licence | author | source |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {s.id} | {s.license} | {s.attribution} | {s.source} |" for s in samples]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=default_database_dir())
    args = parser.parse_args()
    data = skimage_data_dir()
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for sample in SAMPLES:
        image = shrink(data / sample.file)
        image.save(out / f"{sample.id}.jpg", "JPEG", quality=JPEG_QUALITY, optimize=True)
        (out / f"{sample.id}.txt").write_text(sample.caption + "\n", encoding="utf-8")
        meta = {
            "title": sample.id.replace("_", " "),
            "license": sample.license,
            "attribution": sample.attribution,
            "source": sample.source,
        }
        (out / f"{sample.id}.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (out / "LICENSE.md").write_text(licence_file(SAMPLES), encoding="utf-8")
    info = build_index(out, None, out, model_name=None, device="cpu", progress=True)
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"{info.n_items} images, embeddings {info.embeddings}, {total / 1e6:.2f} MB in {out}")


if __name__ == "__main__":
    main()
