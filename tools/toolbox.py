"""The image toolbox the aligner talks to: availability, execution and QA of candidates.

Tools are constructed cheaply from :class:`~mcu_sim.tools.settings.ImagesConfig` and load
their weights on first use. Availability is probed once and cached with its reason, so the
router can fall back without retrying a tool that cannot run here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcu_sim.tools.base import Candidate, ToolUnavailable, image_record
from mcu_sim.tools.settings import ImagesConfig


@dataclass
class Verdict:
    """QA outcome over all candidates of one try."""

    best: dict[str, Any] | None
    alternatives: list[dict[str, Any]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)


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
    ) -> None:
        self.settings = settings or ImagesConfig()
        self._tools: dict[str, Any] = dict(tools or {})
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
            from mcu_sim.tools.retrieval import ImageDatabase, default_database_dir

            r = s.retrieval
            db_dir = Path(r.database) if r.database else default_database_dir()
            return ImageDatabase(
                db_dir, clip_model=r.clip_model, clip_pretrained=r.clip_pretrained, **common
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
        if module == "face":
            from mcu_sim.tools.face import FaceGenerator

            f = s.face
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
        }
        if not self.settings.enabled:
            return False, "images.enabled is false"
        if not flags.get(module, False):
            return False, f"disabled in config (images.{_section(module)}.enabled)"
        return True, ""

    def tool(self, module: str) -> Any:
        if module not in self._tools:
            self._tools[module] = self._make(module)
        return self._tools[module]

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
        out_dir.mkdir(parents=True, exist_ok=True)
        tool = self.tool(module)
        try:
            await asyncio.to_thread(tool.load)  # weights load once; a failure disables it
        except Exception as exc:
            reason = exc.reason if isinstance(exc, ToolUnavailable) else f"load failed: {exc}"
            self.disable(module, reason[:300])
            raise ToolUnavailable(module, reason[:300]) from exc
        try:
            if module == "retrieval":
                found = await tool.search(
                    description, k=self.settings.retrieval.top_k, out_dir=out_dir
                )
            elif module == "web_search":
                found = await tool.search(
                    description, keywords, self.settings.web_search.top_k, out_dir
                )
            else:
                if not face_image:
                    raise ToolUnavailable(module, "the episode has no face image to condition on")
                found = [
                    await tool.generate(
                        description, [Path(face_image)], seed, out_dir / f"{stem}.png"
                    )
                ]
        except ToolUnavailable as exc:
            self.disable(module, exc.reason)
            raise
        return [candidate_dict(c) for c in found]

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
            from mcu_sim.tools.qa import build_qa_scorers

            self._scorers = build_qa_scorers(self.settings)
        return self._scorers

    async def judge_candidates(
        self, candidates: list[dict[str, Any]], description: str, run_dir: Path
    ) -> Verdict:
        from mcu_sim.tools.qa import judge

        return await judge(self, candidates, description, run_dir)


def _section(module: str) -> str:
    return {"personalized_t2i": "photomaker"}.get(module, module)
