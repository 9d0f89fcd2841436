"""The image toolbox the aligner talks to: availability, execution and QA of candidates.

Tools are constructed cheaply from :class:`~mcu_sim.tools.settings.ImagesConfig` and load
their weights on first use. Availability is probed once and cached with its reason, so the
router can fall back without retrying a tool that cannot run here. Only a tool that cannot
load (or is disabled) is off for the whole process (:class:`ToolDisabled`); a tool that
cannot serve one request (no face image, search page unreachable) raises plain
:class:`~mcu_sim.tools.base.ToolUnavailable` and the aligner re-routes that request alone.

Every execution writes its candidates as ``<stem>-<name>`` beside the episode, so the files
of one try never collide with another request's; QA deletes the ones it does not keep.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcu_sim.tools.base import Candidate, ToolUnavailable, image_record
from mcu_sim.tools.qa import Verdict, build_qa_scorers, judge
from mcu_sim.tools.settings import ImagesConfig

GENERATORS = {"personalized_t2i", "t2i"}
SDXL_MODULES = {"personalized_t2i", "t2i", "face"}  # tools with ``generate_batch``


class ToolDisabled(ToolUnavailable):
    """The tool cannot run in this process at all (failed to load, or disabled): the router
    stops offering it to every episode, not just the current request."""


def candidate_dict(candidate: Candidate) -> dict[str, Any]:
    return {
        "path": str(candidate.path),
        "module": candidate.module,
        "source_url": candidate.source_url,
        "db_id": candidate.db_id,
        "seed": candidate.seed,
        "scores": dict(candidate.scores),
        "caption": candidate.caption,
    }


class ImageToolbox:
    """Owns the image tools and scorers of one process (shared by all episodes)."""

    def __init__(
        self,
        settings: ImagesConfig | None = None,
        tools: dict[str, Any] | None = None,
        scorers: dict[str, Any] | None = None,
        batch_generation: bool = False,
    ) -> None:
        self.settings = settings or ImagesConfig()
        self._tools: dict[str, Any] = dict(tools or {})
        self.batch_generation = batch_generation  # concurrent generate calls share batches
        self._scorers = scorers
        self._availability: dict[str, tuple[bool, str]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------ construction
    @property
    def router_order(self) -> list[str]:
        return list(self.settings.router_order)

    @property
    def qa_settings(self) -> Any:
        return self.settings.qa

    def _make(self, module: str) -> Any:
        s = self.settings
        common = {"device": s.device}
        if module == "personalized_t2i":
            from mcu_sim.tools.photomaker import PhotoMakerGenerator

            p = s.photomaker
            return PhotoMakerGenerator(
                base_model=p.base_model,
                photomaker_ckpt=p.checkpoint,
                steps=p.steps,
                dtype=s.dtype,
                height=p.height,
                width=p.width,
                **common,
            )
        if module == "retrieval":
            from mcu_sim.tools.retrieval import default_database_dir
            from mcu_sim.tools.retrieval_multi import open_databases

            r = s.retrieval
            dirs = [Path(d) for d in r.databases] or [
                Path(r.database) if r.database else default_database_dir()
            ]
            return open_databases(
                dirs,
                clip_model=r.clip_model,
                clip_pretrained=r.clip_pretrained,
                min_combined=r.min_combined,
                **common,
            )
        if module == "web_search":
            from mcu_sim.tools.web_search import WebImageSearch

            w = s.web_search
            return WebImageSearch(
                crawler=w.crawler,
                allow_loopback=w.allow_loopback,
                max_bytes=w.max_bytes,
                timeout_s=w.timeout_s,
                search_url=w.search_url,
            )
        if module in ("face", "t2i"):  # the same SDXL text-to-image tool
            from mcu_sim.tools.face import FaceGenerator

            f = s.face if module == "face" else s.t2i
            return FaceGenerator(
                base_model=f.base_model,
                lightning_unet=f.lightning_unet,
                lightning_lora=f.lightning_lora,
                steps=f.steps,
                dtype=s.dtype,
                height=f.height,
                width=f.width,
                **common,
            )
        raise ValueError(f"unknown image module {module!r}")

    def _enabled(self, module: str) -> tuple[bool, str]:
        flags = {
            "personalized_t2i": self.settings.photomaker.enabled,
            "retrieval": self.settings.retrieval.enabled,
            "web_search": self.settings.web_search.enabled,
            "face": self.settings.face.enabled,
            "t2i": self.settings.t2i.enabled,
        }
        if not self.settings.enabled:
            return False, "images.enabled is false"
        if not flags.get(module, False):
            return False, f"disabled in config (images.{_section(module)}.enabled)"
        return True, ""

    def tool(self, module: str) -> Any:
        if module not in self._tools:
            made = self._make(module)
            if self.batch_generation and module in SDXL_MODULES:
                from mcu_sim.tools.batching import BatchingGenerator

                batching = self.settings.batching
                made = BatchingGenerator(made, batching.window_s, batching.max_batch)
            self._tools[module] = made
        return self._tools[module]

    def tools(self) -> dict[str, Any]:
        """The tools made so far, by module (batching wrappers included)."""
        return dict(self._tools)

    def generation_batches(self) -> dict[str, list[int]]:
        """Requests per pipeline call of each batched generator, by module."""
        return {
            module: list(tool.batches)
            for module, tool in self._tools.items()
            if module in SDXL_MODULES and isinstance(getattr(tool, "batches", None), list)
        }

    def availability(self, module: str) -> tuple[bool, str]:
        """(usable, reason); probed once per module."""
        if module not in self._availability:
            ok, why = self._enabled(module)
            if ok:
                try:
                    ok, why = self.tool(module).available()
                except Exception as exc:  # a broken install is a reason, not a crash
                    ok, why = False, f"{type(exc).__name__}: {exc}"
            self._availability[module] = (ok, why)
        return self._availability[module]

    def disable(self, module: str, reason: str) -> None:
        self._availability[module] = (False, reason)

    # ------------------------------------------------------------ execution
    async def execute(
        self,
        module: str,
        description: str,
        *,
        keywords: list[str],
        seed: int,
        out_dir: Path,
        stem: str,
        face_image: str | None = None,
    ) -> list[dict[str, Any]]:
        """Candidates of one try, written to ``out_dir`` as ``<stem>…``.

        Raises :class:`ToolDisabled` when the tool is off for the process (it is never
        re-loaded after a failed load), plain ``ToolUnavailable`` when only this request
        cannot use it."""
        ok, why = self.availability(module)
        if not ok:
            raise ToolDisabled(module, why)
        tool = self.tool(module)
        try:
            await asyncio.to_thread(tool.load)  # weights load once; a failure disables it
        except Exception as exc:
            reason = exc.reason if isinstance(exc, ToolUnavailable) else f"load failed: {exc}"
            self.disable(module, reason[:300])
            raise ToolDisabled(module, reason[:300]) from exc
        out_dir.mkdir(parents=True, exist_ok=True)
        if module == "t2i":  # MAGID: text only, no face to condition on
            found = [await tool.generate(description, seed, out_dir / f"{stem}.png")]
        elif module in GENERATORS:
            if not face_image:
                raise ToolUnavailable(module, "the episode has no face image to condition on")
            found = [
                await tool.generate(description, [Path(face_image)], seed, out_dir / f"{stem}.png")
            ]
        else:
            found = await self._search(module, tool, description, keywords, out_dir, stem)
        return [candidate_dict(c) for c in found]

    async def _search(
        self,
        module: str,
        tool: Any,
        description: str,
        keywords: list[str],
        out_dir: Path,
        stem: str,
    ) -> list[Candidate]:
        """Search into a private folder, then move the results to ``<stem>-<name>``."""
        stage = out_dir / f".{stem}.stage"
        try:
            if module == "retrieval":
                found = await tool.search(
                    description, k=self.settings.retrieval.top_k, out_dir=stage
                )
            else:
                found = await tool.search(
                    description, keywords, self.settings.web_search.top_k, stage
                )
            return [_settle(c, out_dir / f"{stem}-{c.path.name}", stage) for c in found]
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    async def generate_face(self, face: dict[str, Any], episode_id: str, run_dir: Path) -> dict:
        """The episode's face, or the face marked unavailable with the reason."""
        face = dict(face)
        ok, why = self.availability("face")
        if not ok:
            face.update(status="unavailable", reason=why)
            return face
        out = run_dir / "images" / episode_id / "face.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            candidate = await self.tool("face").generate(face["prompt"], face["seed"], out)
        except ToolUnavailable as exc:
            self.disable("face", exc.reason)
            face.update(status="unavailable", reason=exc.reason)
            return face
        record = image_record(candidate, relative_to=run_dir)
        face.update(status="generated", reason=None, image=record)
        return face

    @property
    def face(self) -> Any:
        return self.tool("face") if self.availability("face")[0] else None

    # ------------------------------------------------------------ QA
    def scorers(self) -> dict[str, Any]:
        if self._scorers is None:
            self._scorers = build_qa_scorers(self.settings)
        return self._scorers

    async def judge_candidates(
        self, candidates: list[dict[str, Any]], description: str, run_dir: Path
    ) -> Verdict:
        return await judge(self, candidates, description, run_dir)

    def image_similarity(self) -> tuple[Callable[[list[str]], Any] | None, str]:
        """Pairwise CLIP image similarity with the QA's CLIP scorer (DialogCC's
        inconsistent-images rule), or ``(None, why)`` when there is none."""
        scorer = self.scorers().get("clip")
        similarity = getattr(scorer, "image_similarity_sync", None)
        if scorer is None or similarity is None:
            return None, "no CLIP scorer among images.qa.scorers"
        ok, why = scorer.available()
        if not ok:
            return None, f"CLIP scorer unavailable: {why}"
        return similarity, ""


def _settle(candidate: Candidate, target: Path, stage: Path) -> Candidate:
    """Move (or copy, for a file outside the staging folder) a candidate to ``target``."""
    source = Path(candidate.path)
    if source.parent == stage:
        os.replace(source, target)
    else:
        shutil.copyfile(source, target)
    return dataclasses.replace(candidate, path=target)


def _section(module: str) -> str:
    return {"personalized_t2i": "photomaker"}.get(module, module)
