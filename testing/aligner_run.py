"""Run the real image-aligner subgraph on a few requests, for tests and smoke benchmarks:
tiny PhotoMaker weights, images settings pointed at them and at a local image site, and a
driver that invokes the compiled subgraph with a real runtime context."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

PERSON = {"name": "Mina", "age": 34, "gender": "female", "class_word": "woman"}


def tiny_photomaker_assets(root: Path) -> dict[str, Path]:
    """A tiny random SDXL base, a PhotoMaker checkpoint in the published layout, a face."""
    from PIL import Image

    from mcu_sim.testing.tiny_sdxl import save_tiny_photomaker, save_tiny_sdxl

    base = save_tiny_sdxl(root / "base")
    face = root / "face.png"
    Image.new("RGB", (40, 40), (180, 140, 120)).save(face)
    return {"base": base, "ckpt": save_tiny_photomaker(base, root / "pm.bin"), "face": face}


def images_settings(tiny: dict[str, Path], search_url: str, **changes: Any) -> Any:
    """``ImagesConfig`` with all three modules usable; ``changes`` update its sections."""
    from mcu_sim.tools.settings import ImagesConfig

    data: dict[str, Any] = {
        "photomaker": {
            "base_model": str(tiny["base"]),
            "checkpoint": str(tiny["ckpt"]),
            "steps": 2,
            "height": 32,
            "width": 32,
        },
        "web_search": {
            "enabled": True,
            "allow_loopback": True,
            "search_url": search_url,
            "top_k": 2,
            "timeout_s": 5,
        },
        "retrieval": {"top_k": 2},
    }
    for section, values in changes.items():
        data.setdefault(section, {}).update(values)
    return ImagesConfig.model_validate(data)


def sharing_request(rid: str, description: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": rid,
        "origin": "sharing",
        "description": description,
        "keywords": ["x"],
        "status": "pending",
        "image_source": "internet",
        **fields,
    }


def align_requests(
    server: Any,
    run_dir: Path,
    toolbox: Any,
    requests: list[dict[str, Any]],
    face: Path | None,
    person: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Each request through the compiled aligner subgraph, one after the other."""
    from mcu_sim.config import load_config
    from mcu_sim.graphs.aligner import compile_aligner_graph
    from mcu_sim.graphs.context import EpisodeContext
    from mcu_sim.testing.fake_openai import client_for

    config = load_config(None, ["images.enabled=false"])
    client = client_for(server, run_dir / "cache.sqlite")
    context = EpisodeContext(config=config, llm=client, run_dir=run_dir, tools=toolbox)
    graph = compile_aligner_graph()

    async def one(request: dict[str, Any]) -> dict[str, Any]:
        state = {
            "request": request,
            "person": person or PERSON,
            "face_image": str(face) if face else None,
            "episode_id": "ep-1",
            "seed": 3,
        }
        out = await graph.ainvoke(state, context=context)
        (result,) = out["image_requests"]
        return result

    async def all_of() -> list[dict[str, Any]]:
        return [await one(r) for r in requests]

    return asyncio.run(all_of())


def episode_files(run_dir: Path, episode_id: str = "ep-1") -> set[str]:
    """Paths (relative to the run dir) of the files in an episode's image folder."""
    folder = run_dir / "images" / episode_id
    if not folder.is_dir():
        return set()
    return {str(p.relative_to(run_dir)) for p in folder.rglob("*") if p.is_file()}


def referenced_files(results: list[dict[str, Any]]) -> set[str]:
    """Image paths the requests reference (chosen images and alternatives)."""
    paths = set()
    for result in results:
        for record in [result.get("image"), *result.get("alternatives", [])]:
            if record:
                paths.add(record["path"])
    return paths
