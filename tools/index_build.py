"""Build an image database: collect items, embed them in batches, index them with AutoFaiss.

Entry point: :func:`build_index` (what ``mcu index build`` calls). Inputs are either a folder
of images (captions from ``<stem>.txt`` side files, the img2dataset convention) or a parquet
file with an image column (bytes, or a path relative to the parquet file) and an optional
caption column. Embeddings are written straight into memory-mapped ``.npy`` files, so a
large collection does not have to fit in RAM.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcu_sim.tools.embedders import carries_weights, check_clip_weights
from mcu_sim.tools.image_db import (
    MANIFEST,
    MINILM_KIND,
    SEARCH_POOL,
    DbItem,
    embedding_slug,
    new_manifest,
    read_items,
    read_manifest,
    similarity_stats,
    write_items,
    write_manifest,
)
from mcu_sim.tools.index_inputs import collect_items
from mcu_sim.tools.index_tune import DEFAULT_TARGET_RECALL, tune_entry

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

EXACT_INDEX_BELOW = 20_000  # below this, a flat (exact) index beats any approximate one


@dataclass
class IndexInfo:
    """What :func:`build_index` produced."""

    out: Path
    n_items: int
    n_captions: int
    embeddings: list[str]
    model_name: str | None
    dim: int | None
    index_key: str | None
    seconds: float
    skipped: list[tuple[str, str]] = field(default_factory=list)
    stats: dict[str, float | int] | None = None
    index_tuning: dict[str, Any] | None = None  # how the image index's nprobe was chosen


def _progress(enabled: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def _autofaiss_in_child(progress: bool, arguments: dict[str, Any]) -> dict[str, Any] | None:
    """Runs in a child process: ``autofaiss.build_index``; its infos, or None when it built
    nothing.

    AutoFaiss configures logging when it starts (``logging.config.dictConfig``, which closes
    every handler the calling process installed) and draws tqdm bars; in a child of its own
    neither touches the caller, its peak memory is returned to the system when it ends, and
    a crash inside faiss becomes an error here instead of the end of the run.
    """
    if not progress:
        os.environ["TQDM_DISABLE"] = "1"  # read by tqdm when it is first imported, below
    from autofaiss import build_index

    index, infos = build_index(**arguments)
    if index is None:
        return None
    return dict(infos) if isinstance(infos, dict) else {}


def _run_autofaiss(progress: bool, arguments: dict[str, Any]) -> dict[str, Any] | None:
    """:func:`_autofaiss_in_child` in a fresh (spawned) process, waited for."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        try:
            return pool.submit(_autofaiss_in_child, progress, arguments).result()
        except BrokenProcessPool as exc:
            raise RuntimeError(
                f"autofaiss died while building {arguments['index_path']} (the process "
                "building it was killed or crashed; see its output above)"
            ) from exc


# The AutoFaiss settings we ship (bench/retrieval.py measures them at 1M vectors). Indexes are
# built memory-mappable so a database of millions is searched from the page cache, not RAM.
# AutoFaiss's search parameters (tuned for a query-time budget) are then re-tuned for recall
# (tools/index_tune.py) unless the build is asked for no target recall.
AUTOFAISS_SETTINGS: dict[str, Any] = {
    "max_index_memory_usage": "4G",
    "current_memory_available": "8G",
    "max_index_query_time_ms": 10.0,
    "min_nearest_neighbors_to_retrieve": SEARCH_POOL,
    "should_be_memory_mappable": True,
}


IVF_FLAT_UP_TO_BYTES = 3 * 2**30  # within max_index_memory_usage, with room to spare


def shipped_index_key(n_rows: int, dim: int) -> str | None:
    """The faiss index we ask AutoFaiss for; it then tunes its search parameters.

    Exact below :data:`EXACT_INDEX_BELOW`; ``IVF<nlist>,Flat`` (about 4 sqrt(n) lists) while
    the vectors fit :data:`IVF_FLAT_UP_TO_BYTES`; beyond, AutoFaiss's own choice. Its OPQ
    choices fail on faiss >= 1.8 (``OPQMatrix`` lost its keyword arguments), which is why
    the middle range is not left to it.
    """
    if n_rows < EXACT_INDEX_BELOW:
        return "Flat"
    if n_rows * dim * 4 <= IVF_FLAT_UP_TO_BYTES:
        nlist = 1 << max(8, min(16, round(math.log2(4 * math.sqrt(n_rows)))))
        return f"IVF{nlist},Flat"
    return None


def autofaiss_index(
    shards: Path | list[Path],
    index_path: Path,
    n_rows: int,
    progress: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Build and save an inner-product AutoFaiss index over normalised ``.npy`` shards.

    The shards are read in the order given (they are linked into a private folder under
    zero-padded names, since AutoFaiss's reader takes a folder's files in name order).
    ``overrides`` replace entries of :data:`AUTOFAISS_SETTINGS`. Returns AutoFaiss's infos,
    with at least ``index_key`` (and ``index_param``, the search parameters it chose).
    """
    import numpy as np

    paths = [shards] if isinstance(shards, Path) else list(shards)
    dim = int(np.load(paths[0], mmap_mode="r").shape[1])
    index_key = shipped_index_key(n_rows, dim)
    settings = {**AUTOFAISS_SETTINGS, "index_key": index_key, **overrides}
    with tempfile.TemporaryDirectory(prefix="mcu-faiss-") as tmp:
        folder = Path(tmp) / "emb"
        folder.mkdir()
        for number, path in enumerate(paths):
            link = folder / f"{number:06d}.npy"
            try:
                link.symlink_to(Path(path).resolve())
            except OSError:
                np.save(link, np.load(path, mmap_mode="r"))
        infos = _run_autofaiss(
            progress,
            {
                "embeddings": str(folder),
                "index_path": str(index_path),
                "index_infos_path": str(Path(tmp) / "infos.json"),
                "metric_type": "ip",
                "save_on_disk": True,
                "nb_cores": max(1, min(4, os.cpu_count() or 1)),
                "verbose": logging.WARNING,
                **settings,
            },
        )
    if infos is None:
        raise RuntimeError(
            f"autofaiss could not build an index over {n_rows} vectors ({paths[0]}...); "
            "see the autofaiss log above"
        )
    infos.setdefault("index_key", settings["index_key"])
    return infos


def _open_matrix(path: Path, rows: int, dim: int) -> np.ndarray:
    import numpy as np

    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))


def _embed_clip(
    items: list[DbItem],
    files: list[Path],
    out: Path,
    *,
    model_name: str,
    pretrained: str | None,
    batch_size: int,
    device: str,
    progress: bool,
    target_recall: float | None,
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    import numpy as np

    from mcu_sim.tools.base import open_image
    from mcu_sim.tools.embedders import ClipEmbedder

    embedder = ClipEmbedder(model_name, pretrained, device)
    dim = embedder.dim
    slug = embedding_slug(embedder.kind)
    img_path, cap_path = out / f"{slug}.images.npy", out / f"{slug}.captions.npy"
    images = _open_matrix(img_path, len(items), dim)
    skipped: list[tuple[str, str]] = []
    with _progress(progress) as bar:
        task = bar.add_task(f"CLIP images ({model_name})", total=len(items))
        for start in range(0, len(items), batch_size):
            batch, rows = [], []
            for row in range(start, min(start + batch_size, len(items))):
                try:
                    with open_image(files[row]) as img:
                        img.load()
                        batch.append(img.convert("RGB"))
                    rows.append(row)
                except Exception as exc:  # a broken file is skipped, never fatal
                    images[row] = 0.0
                    skipped.append((items[row].id, f"{type(exc).__name__}: {exc}"))
            if batch:
                images[rows] = embedder.embed_images(batch)
            bar.advance(task, min(batch_size, len(items) - start))
        captioned = np.array([bool(it.caption) for it in items])
        captions = None
        if captioned.any():
            captions = _open_matrix(cap_path, len(items), dim)
            ctask = bar.add_task("CLIP captions", total=len(items))
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                texts = [it.caption or "" for it in chunk]
                vecs = embedder.embed_texts(texts)
                vecs[[not it.caption for it in chunk]] = 0.0
                captions[start : start + len(chunk)] = vecs
                bar.advance(ctask, len(chunk))
    images.flush()
    entry: dict[str, Any] = {
        "kind": embedder.kind,
        "model_name": model_name,
        "pretrained": pretrained,
        "random_weights": pretrained is None and not carries_weights(model_name),
        "dim": dim,
        "images": img_path.name,
        "image_index": f"{slug}.images.faiss",
        "captions": None,
        "caption_index": None,
        "stats": None,
    }
    infos = autofaiss_index(img_path, out / entry["image_index"], len(items), progress)
    entry.update(index_key=infos["index_key"], index_param=infos.get("index_param") or None)
    if captions is not None:
        captions.flush()
        entry["captions"] = cap_path.name
        entry["caption_index"] = f"{slug}.captions.faiss"
        infos = autofaiss_index(cap_path, out / entry["caption_index"], len(items), progress)
        entry["caption_index_param"] = infos.get("index_param") or None
        stats = similarity_stats(images, captions, captioned)
        entry["stats"] = stats.to_dict() if stats else None
    if target_recall:
        tune_entry(out, entry, target_recall)
    return entry, skipped


def _verify_files(items: list[DbItem], files: list[Path], progress: bool) -> list[tuple[str, str]]:
    """Without a CLIP pass nothing decodes the images: check them with Pillow instead."""
    from mcu_sim.tools.base import open_image

    skipped = []
    with _progress(progress) as bar:
        task = bar.add_task("checking images", total=len(items))
        for item, file in zip(items, files, strict=True):
            try:
                with open_image(file) as img:
                    img.verify()
            except Exception as exc:  # unreadable files are excluded from search, not fatal
                skipped.append((item.id, f"{type(exc).__name__}: {exc}"))
            bar.advance(task)
    return skipped


def _embed_minilm(
    items: list[DbItem], out: Path, *, device: str, progress: bool, target_recall: float | None
) -> dict[str, Any]:
    from mcu_sim.tools.embedders import MiniLMEmbedder

    embedder = MiniLMEmbedder(device)
    path = out / f"{embedding_slug(MINILM_KIND)}.captions.npy"
    matrix = _open_matrix(path, len(items), embedder.dim)
    with _progress(progress) as bar:
        task = bar.add_task("MiniLM captions", total=len(items))
        for start in range(0, len(items), 256):
            chunk = items[start : start + 256]
            vecs = embedder.embed_texts([it.caption or "" for it in chunk])
            vecs[[not it.caption for it in chunk]] = 0.0
            matrix[start : start + len(chunk)] = vecs
            bar.advance(task, len(chunk))
    matrix.flush()
    index_name = f"{embedding_slug(MINILM_KIND)}.captions.faiss"
    infos = autofaiss_index(path, out / index_name, len(items), progress)
    entry = {
        "kind": MINILM_KIND,
        "dim": int(matrix.shape[1]),
        "captions": path.name,
        "caption_index": index_name,
        "index_key": infos["index_key"],
        "caption_index_param": infos.get("index_param") or None,
    }
    if target_recall:
        tune_entry(out, entry, target_recall)
    return entry


def _check_out(out: Path, images_dir: Path | None) -> None:
    """``out`` is new, empty, an existing database, or the very folder of the images."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST).exists():
        return
    beside_own_images = images_dir is not None and Path(images_dir).resolve() == out.resolve()
    if not beside_own_images and any(out.iterdir()):
        raise FileExistsError(
            f"{out} is not empty and holds no image database (left by a crashed build? "
            "then delete it): choose a new --out folder"
        )


def _prepare_out(out: Path, items: list[DbItem], images_root: str) -> dict[str, Any]:
    """A fresh manifest, or the existing one when ``out`` already holds these same items."""
    if not (out / MANIFEST).exists():
        return new_manifest(images_root, len(items))
    manifest = read_manifest(out)
    old = [(it.id, it.path) for it in read_items(out)]
    if old != [(it.id, it.path) for it in items] or manifest.get("images_root") != images_root:
        raise FileExistsError(
            f"{out} already holds a database of other images: choose a new --out folder "
            "(adding an embedding to an existing database needs the very same images)"
        )
    return manifest


def build_index(
    images_dir: Path | None,
    parquet: Path | None,
    out: Path,
    *,
    model_name: str | None = "ViT-L-14-336",
    pretrained: str | None = None,
    random_weights: bool = False,
    batch_size: int = 32,
    device: str = "cpu",
    progress: bool = True,
    minilm: bool = True,
    target_recall: float | None = DEFAULT_TARGET_RECALL,
) -> IndexInfo:
    """Build (or extend) the image database in ``out``.

    Exactly one of ``images_dir`` and ``parquet`` is given. With ``model_name`` the images
    (and captions) are embedded with open_clip, whose weights come from ``pretrained`` or
    from a ``local-dir:``/``hf-hub:`` model; random weights only with ``random_weights``
    (see :func:`check_clip_weights`). With ``minilm`` the captions are also embedded with
    all-MiniLM-L6-v2 (the fallback used when no CLIP weights are configured).
    ``model_name=None`` builds a caption-only database. Running it again on the same images
    with another model adds that model's embeddings to the database. Approximate indexes
    get the smallest ``nprobe`` reaching ``target_recall`` (``None``: AutoFaiss's choice for
    its query-time budget); see :mod:`mcu_sim.tools.index_tune`.
    """
    started = time.monotonic()
    if (images_dir is None) == (parquet is None):
        raise ValueError("give exactly one of --images DIR or --parquet FILE")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    check_clip_weights(model_name, pretrained, random_weights)
    out = Path(out)
    _check_out(out, images_dir)
    items, files, root = collect_items(images_dir, parquet, out)
    manifest = _prepare_out(out, items, root)
    n_captions = sum(1 for it in items if it.caption)
    if model_name is None and not (minilm and n_captions):
        raise ValueError(
            "nothing to embed: no CLIP model given and no captions for the MiniLM fallback"
        )
    skipped: list[tuple[str, str]] = []
    clip_entry: dict[str, Any] | None = None
    if model_name is not None:
        clip_entry, skipped = _embed_clip(
            items,
            files,
            out,
            model_name=model_name,
            pretrained=pretrained,
            batch_size=batch_size,
            device=device,
            progress=progress,
            target_recall=target_recall,
        )
        manifest["embeddings"][clip_entry["kind"]] = clip_entry
    else:
        skipped = _verify_files(items, files, progress)
    if minilm and n_captions:
        manifest["embeddings"][MINILM_KIND] = _embed_minilm(
            items, out, device=device, progress=progress, target_recall=target_recall
        )
    write_items(out, items)  # items and manifest last: a crash leaves no half database
    manifest["n_items"] = len(items)
    manifest["skipped"] = [list(s) for s in skipped]
    write_manifest(out, manifest)
    return IndexInfo(
        out=out,
        n_items=len(items),
        n_captions=n_captions,
        embeddings=sorted(manifest["embeddings"]),
        model_name=model_name,
        dim=clip_entry["dim"] if clip_entry else None,
        index_key=clip_entry["index_key"] if clip_entry else None,
        seconds=round(time.monotonic() - started, 3),
        skipped=skipped,
        stats=clip_entry["stats"] if clip_entry else None,
        index_tuning=clip_entry.get("index_tuning") if clip_entry else None,
    )
