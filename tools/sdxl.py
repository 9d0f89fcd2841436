"""Shared SDXL plumbing for the face and PhotoMaker tools.

Weights come only from local paths or the Hugging Face cache (``local_files_only=True``); nothing
here downloads. ``SDXLTool`` is the common shell: cheap construction and validation, a lazy
``load()`` that runs once, and an async call that runs the blocking pipeline in a worker thread,
one generation at a time per tool (a diffusers pipeline is not thread-safe).

Every generation is a batch: ``generate_batch`` renders several :class:`GenerationRequest`
that share a :attr:`~GenerationRequest.key` (size and steps) in one pipeline call, with one
``torch.Generator`` per request seeded with that request's seed, so each image is the one the
request alone would give. ``generate`` is a batch of one.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mcu_sim.tools.base import ToolUnavailable, resolve_device

T = TypeVar("T")
_BUILD_LOCK = threading.Lock()  # one tool loads at a time in a process

DTYPES = ("float32", "float16", "bfloat16")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def torch_dtype(name: str) -> Any:
    """The torch dtype for one of ``DTYPES``."""
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def dtype_kwargs(name: str) -> dict[str, Any]:
    """``from_pretrained`` keyword for a dtype: ``dtype`` on recent diffusers, where
    ``torch_dtype`` is deprecated, ``torch_dtype`` before that."""
    from diffusers.utils import deprecation_utils

    key = (
        "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"
    )
    return {key: torch_dtype(name)}


def _looks_like_repo_id(value: str) -> bool:
    parts = value.split("/")
    return len(parts) == 2 and all(parts) and not value.startswith((".", "~"))


def check_base_model(base_model: str | None) -> tuple[bool, str]:
    """Whether ``base_model`` can be loaded offline: a diffusers folder, a single checkpoint
    file, or a Hub repo id already in the local cache."""
    if not base_model:
        return False, "no SDXL base model configured"
    path = Path(base_model).expanduser()
    if path.is_dir():
        if (path / "model_index.json").is_file():
            return True, ""
        return False, f"{path} has no model_index.json (expected a diffusers SDXL folder)"
    if path.is_file():
        return True, ""
    if _looks_like_repo_id(base_model):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(base_model, "model_index.json")
        if isinstance(cached, str):
            return True, ""
        return False, f"{base_model} is not in the local Hugging Face cache (no downloads here)"
    return False, f"base model path {base_model} does not exist"


def check_weights_file(path: str | None, what: str) -> tuple[bool, str]:
    """Whether an optional weights file exists (``None`` means not configured, which is fine)."""
    if path is None:
        return True, ""
    resolved = Path(path).expanduser()
    if not resolved.exists():
        return False, f"{what} {path} does not exist"
    return True, ""


def missing_packages(*names: str) -> list[str]:
    """Import names that are not installed (found without importing them)."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def load_state_dict_file(path: Path) -> dict[str, Any]:
    """A state dict from a ``.safetensors`` file or a pickled torch file (tensors only)."""
    import torch

    path = Path(path).expanduser()
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"cannot read {path} as a tensor-only torch state dict ({type(exc).__name__}: {exc}); "
            "convert it to .safetensors or re-save it with torch.save(state_dict)"
        ) from exc


def load_sdxl_pipeline(base_model: str, *, dtype: str, tool: str) -> Any:
    """``StableDiffusionXLPipeline`` from a local folder, a single file or the Hub cache."""
    from diffusers import StableDiffusionXLPipeline

    path = Path(base_model).expanduser()
    kwargs: dict[str, Any] = {**dtype_kwargs(dtype), "local_files_only": True}
    try:
        if path.is_file():
            return StableDiffusionXLPipeline.from_single_file(str(path), **kwargs)
        source = str(path) if path.is_dir() else base_model
        return StableDiffusionXLPipeline.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        hint = (
            " (a single-file checkpoint also needs the SDXL component configs in the local Hugging "
            "Face cache; pointing base_model at a diffusers folder avoids that)"
            if path.is_file()
            else ""
        )
        raise ToolUnavailable(tool, f"cannot load SDXL base {base_model}: {exc}{hint}") from exc


def fuse_unet_lora(pipe: Any, state: dict[str, Any], adapter_name: str, scale: float = 1.0) -> None:
    """Load UNet LoRA weights, merge them into the UNet weights, and drop the LoRA layers.

    Fusing keeps inference as fast as the plain model; the state dict may use any layout that
    diffusers' ``load_lora_weights`` understands (peft, old diffusers attention processors,
    kohya).
    """
    if not state:
        raise ValueError(f"LoRA weights for {adapter_name!r} are empty")
    pipe.load_lora_weights(state, adapter_name=adapter_name)
    loaded = pipe.get_list_adapters().get("unet", [])
    if adapter_name not in loaded:
        raise ValueError(
            f"LoRA {adapter_name!r} has no UNet weights diffusers recognises "
            f"(first keys: {list(state)[:3]})"
        )
    pipe.fuse_lora(components=["unet"], lora_scale=scale, adapter_names=[adapter_name])
    pipe.unload_lora_weights()


def cpu_generator(seed: int) -> Any:
    """A CPU ``torch.Generator``: the same seed gives the same latents on every device."""
    import torch

    return torch.Generator(device="cpu").manual_seed(int(seed))


def save_png(image: Any, out_path: Path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    image.save(out_path, format="PNG")
    return out_path


@dataclass(frozen=True)
class GenerationRequest:
    """One image to render; the tool fills in its defaults (see ``SDXLTool.request``)."""

    prompt: str
    seed: int
    out_path: Path
    height: int
    width: int
    steps: int
    id_images: tuple[Path, ...] = ()  # PhotoMaker: the person's face image(s)
    negative_prompt: str = ""

    @property
    def key(self) -> tuple[int, int, int]:
        """Requests with the same key can share one pipeline call."""
        return (self.height, self.width, self.steps)


class SDXLTool:
    """Common shell of the SDXL-based tools (see module docstring)."""

    name = "sdxl"
    required_packages: tuple[str, ...] = ("torch", "diffusers", "transformers")

    def __init__(
        self, *, base_model: str | None, device: str, dtype: str, height: int, width: int
    ) -> None:
        if device not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device must be cpu, cuda or mps, not {device!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        if device == "cpu" and dtype == "float16":
            raise ValueError("float16 is not supported on cpu; use float32 or bfloat16")
        for side, value in (("height", height), ("width", width)):
            if value <= 0 or value % 8:
                raise ValueError(f"{side} must be a positive multiple of 8, not {value}")
        self.base_model = base_model
        self.device = device
        self.dtype = dtype
        self.height = height
        self.width = width
        self.pipe: Any = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()

    # -- availability -------------------------------------------------------------------------
    def _extra_checks(self) -> tuple[bool, str]:
        """Tool-specific checks (weights files); override."""
        return True, ""

    def available(self) -> tuple[bool, str]:
        """(True, "") when ``load()`` can work offline, else (False, reason). Never downloads."""
        missing = missing_packages(*self.required_packages)
        if missing:
            return False, f"missing packages {', '.join(missing)} (install mcu-sim[images])"
        for ok, reason in (check_base_model(self.base_model), self._extra_checks()):
            if not ok:
                return False, reason
        if self.device != "cpu":
            try:
                resolve_device(self.device)
            except ToolUnavailable as exc:
                return False, exc.reason
        return True, ""

    # -- loading ------------------------------------------------------------------------------
    def _build(self) -> Any:
        """Create the ready pipeline; override."""
        raise NotImplementedError

    def load(self) -> None:
        """Import the heavy libraries and load the weights, once. Raises ``ToolUnavailable``."""
        with self._load_lock:
            if self.pipe is not None:
                return
            ok, reason = self.available()
            if not ok:
                raise ToolUnavailable(self.name, reason)
            resolve_device(self.device)
            with _BUILD_LOCK:  # diffusers' lazy imports race when two tools load at once
                pipe = self._build()
                pipe.set_progress_bar_config(disable=True)
                self.pipe = pipe.to(self.device)

    def unload(self) -> None:
        """Drop the pipeline (frees its memory once nothing else holds it)."""
        with self._load_lock, self._run_lock:
            self.pipe = None

    # -- generation ---------------------------------------------------------------------------
    def sized(
        self, height: int | None, width: int | None, steps: int | None
    ) -> tuple[int, int, int]:
        """(height, width, steps) of a request: the tool's own where not given."""
        height = self.height if height is None else height
        width = self.width if width is None else width
        steps = int(getattr(self, "steps", 1)) if steps is None else steps
        for side, value in (("height", height), ("width", width)):
            if value <= 0 or value % 8:
                raise ValueError(f"{side} must be a positive multiple of 8, not {value}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, not {steps}")
        return height, width, steps

    def _generate_batch_sync(self, requests: Sequence[GenerationRequest]) -> list[Any]:
        """One pipeline call for ``requests`` (same key); override."""
        raise NotImplementedError

    async def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[Any]:
        """Candidates for ``requests``, in their order, from one pipeline call."""
        requests = list(requests)
        if not requests:
            return []
        keys = {r.key for r in requests}
        if len(keys) > 1:
            raise ValueError(f"one batch needs one size and step count, got {sorted(keys)}")
        return await self._run(lambda: self._generate_batch_sync(requests))

    async def _run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a worker thread after a lazy load, one at a time."""

        def work() -> T:
            self.load()
            with self._run_lock:
                return fn()

        return await asyncio.to_thread(work)
