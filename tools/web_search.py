"""Web image search (STARK §3.8): icrawler finds image URLs, our hardened downloader fetches.

icrawler runs its usual feeder → parser → downloader threads; the crawler class is
configurable (``"bing"`` by default, ``"google"``, ``"baidu"`` or ``"package.module:Class"``).
Only its downloader is replaced: :class:`HardenedDownloader` sends every URL through
:func:`mcu_sim.tools.safe_download.fetch_image` (address checks, manual redirects, size,
time, content-type and Pillow checks), drops duplicates by SHA-256, and writes the images
itself as ``web_<sha256[:16]>.<ext>``. Every refused URL is reported with its reason.

``search_url`` replaces the search engine's result-page address (a template with
``{query}`` and ``{offset}``), so tests can serve a result page on 127.0.0.1 in the format
the crawler's parser expects.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from mcu_sim.storage_errors import storage_failure
from mcu_sim.tools.base import Candidate, ToolUnavailable
from mcu_sim.tools.safe_download import FetchError, FetchPolicy, fetch_image

log = logging.getLogger(__name__)
TOOL = "web_search"
BING_RESULTS_URL = "https://www.bing.com/images/async?q={query}&first={offset}"  # as icrawler
BUILTIN_CRAWLERS = {
    "bing": "icrawler.builtin:BingImageCrawler",
    "google": "icrawler.builtin:GoogleImageCrawler",
    "baidu": "icrawler.builtin:BaiduImageCrawler",
}
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp"}
RESULTS_PER_PAGE = 20  # the offset step icrawler's Bing feeder uses


class _Collector:
    """Thread-safe results of one search: files written, duplicates, refusals."""

    def __init__(self, out_dir: Path, policy: FetchPolicy, wanted: int, deadline: float) -> None:
        self.out_dir = out_dir
        self.policy = policy
        self.wanted = wanted
        self.deadline = deadline  # time.monotonic() when the search ends, fetches or not
        self.closed = False  # set at the deadline: late fetches are dropped, never written
        self.lock = threading.Lock()
        self.sequence = 0
        self.by_hash: dict[str, str] = {}
        self.found: list[tuple[int, Candidate]] = []
        self.refusals: list[tuple[str, str]] = []
        self.page_errors: list[str] = []
        self.pages_ok = 0
        self.storage_error: BaseException | None = None  # a full disk ends the search

    def next_rank(self) -> int:
        with self.lock:
            self.sequence += 1
            return self.sequence

    def refuse(self, url: str, reason: str) -> None:
        log.info("web image refused: %s (%s)", url, reason)
        with self.lock:
            self.refusals.append((url, reason))

    def storage_failed(self, exc: BaseException) -> None:
        """Remember the first storage failure; the search raises it when the crawl ends."""
        with self.lock:
            self.storage_error = self.storage_error or exc

    def enough(self) -> bool:
        with self.lock:
            return len(self.found) >= self.wanted

    def fetch(self, url: str) -> bool:
        """Fetch ``url``; keep it unless refused or a duplicate. True when kept."""
        rank = self.next_rank()
        try:
            image = fetch_image(url, self.policy, deadline=self.deadline)
        except FetchError as exc:
            self.refuse(url, exc.reason)
            return False
        ext = EXTENSIONS.get(image.format.upper(), image.format.lower())
        path = self.out_dir / f"web_{image.sha256[:16]}.{ext}"
        with self.lock:  # held while writing: after close() nothing more lands on disk
            if self.closed:
                return False
            first = self.by_hash.get(image.sha256)
            if first is None:
                self.by_hash[image.sha256] = url
                if not path.exists():
                    tmp = path.with_name(f"{path.name}.{threading.get_ident()}.part")
                    tmp.write_bytes(image.data)
                    tmp.replace(path)
                # rank: position among the result URLs tried, 1 = the search engine's first
                scores: dict[str, float | str] = {"rank": rank}
                self.found.append((rank, Candidate(path, TOOL, source_url=url, scores=scores)))
        if first is not None:
            self.refuse(url, f"duplicate of {first} (same sha256)")
            return False
        return True

    def close(self) -> None:
        with self.lock:
            self.closed = True

    def candidates(self) -> list[Candidate]:
        with self.lock:
            return [c for _, c in sorted(self.found, key=lambda pair: pair[0])][: self.wanted]


@functools.cache
def _hardened_downloader_cls() -> type:
    from icrawler import Downloader

    class HardenedDownloader(Downloader):  # type: ignore[misc]
        """icrawler downloader whose every fetch goes through ``fetch_image``."""

        def __init__(self, thread_num: int, signal: Any, session: Any, storage: Any, **kw: Any):
            super().__init__(thread_num, signal, session, storage)
            self.collector: _Collector = kw["collector"]

        def download(self, task: dict[str, Any], default_ext: str, *args: Any, **kw: Any) -> bool:
            url = str(task.get("file_url") or "")
            task["success"] = self.collector.fetch(url) if url else False
            if self.collector.enough():
                self.signal.set(reach_max_num=True)
            return bool(task["success"])

        def worker_exec(self, max_num: int, *args: Any, **kwargs: Any) -> None:
            # icrawler's own loop gives up after one empty wait once something was fetched;
            # ours waits until the parser is done or we have enough.
            while not self.signal.get("reach_max_num"):
                try:
                    task = self.in_queue.get(timeout=0.5)
                except queue.Empty:
                    if self.signal.get("parser_exited"):
                        break
                    continue
                try:
                    self.download(task, "jpg")
                except Exception as exc:  # one bad URL must not end the worker
                    if storage_failure(exc) is not None:  # ... but a full disk ends the search
                        self.collector.storage_failed(exc)
                        self.signal.set(reach_max_num=True)
                    else:
                        self.collector.refuse(str(task.get("file_url")), f"internal error: {exc}")
                finally:
                    self.in_queue.task_done()

    return HardenedDownloader


@functools.cache
def _page_feeder_cls() -> type:
    from icrawler import Feeder

    class ResultPageFeeder(Feeder):  # type: ignore[misc]
        """Feeds result-page URLs from a template with ``{query}`` and ``{offset}``."""

        def __init__(self, thread_num: int, signal: Any, session: Any, **kw: Any) -> None:
            super().__init__(thread_num, signal, session)
            self.template: str = kw["template"]
            self.pages: int = kw["pages"]

        def feed(self, keyword: str, offset: int = 0, **_: Any) -> None:
            for page in range(self.pages):
                url = self.template.format(
                    query=quote_plus(keyword), offset=offset + page * RESULTS_PER_PAGE
                )
                self.out_queue.put(url)

    return ResultPageFeeder


class _PageSession:
    """Wraps the crawler's session to note whether result pages could be fetched."""

    def __init__(self, session: Any, collector: _Collector) -> None:
        self._session = session
        self._collector = collector

    def get(self, url: str, **kwargs: Any) -> Any:
        # requests' timeouts are per phase; the search's deadline caps each of them
        remaining = max(self._collector.deadline - time.monotonic(), 0.01)
        given = kwargs.get("timeout")
        kwargs["timeout"] = min(given, remaining) if isinstance(given, int | float) else remaining
        try:
            response = self._session.get(url, **kwargs)
        except Exception as exc:
            with self._collector.lock:
                self._collector.page_errors.append(f"{type(exc).__name__}: {exc}")
            raise
        with self._collector.lock:
            if response.status_code == 200:
                self._collector.pages_ok += 1
            else:
                self._collector.page_errors.append(f"HTTP {response.status_code} for {url}")
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class WebImageSearch:
    """Search the web for images and download them defensively."""

    def __init__(
        self,
        *,
        crawler: str = "bing",
        allow_loopback: bool = False,
        max_bytes: int = 10_000_000,
        timeout_s: float = 15,
        max_pixels: int = 40_000_000,
        search_url: str | None = None,
        threads: int = 2,
        crawl_timeout_s: float | None = None,
        ca_certs: str | None = None,
    ) -> None:
        self.crawler = crawler
        self.policy = FetchPolicy(
            allow_loopback=allow_loopback,
            max_bytes=max_bytes,
            timeout_s=timeout_s,
            max_pixels=max_pixels,
            ca_certs=ca_certs,
        )
        self.search_url = search_url
        self.threads = max(1, threads)
        self.crawl_timeout_s = crawl_timeout_s or max(30.0, 4 * timeout_s)
        self.last_refusals: list[tuple[str, str]] = []
        self._crawler_cls: type | None = None

    def available(self) -> tuple[bool, str]:
        for module in ("icrawler", "bs4", "lxml", "httpx", "certifi"):
            if importlib.util.find_spec(module) is None:
                return False, f"{module} is not installed: pip install 'mcu-sim[images]'"
        try:
            self.load()
        except ToolUnavailable as exc:
            return False, exc.reason
        return True, ""

    def load(self) -> None:
        if self._crawler_cls is not None:
            return
        spec = BUILTIN_CRAWLERS.get(self.crawler.lower(), self.crawler)
        module_name, _, class_name = spec.partition(":")
        try:
            crawler_cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ToolUnavailable(
                TOOL,
                f"crawler {self.crawler!r} not found: use bing, google, baidu or "
                f"'package.module:CrawlerClass' ({exc})",
            ) from exc

        def quiet_logger(crawler: Any, log_level: int = logging.INFO) -> None:
            crawler.logger = logging.getLogger("icrawler.crawler")  # no basicConfig

        quiet = {"set_logger": quiet_logger}
        self._crawler_cls = type(f"Quiet{class_name}", (crawler_cls,), quiet)

    def _template(self) -> str | None:
        if self.search_url:
            return self.search_url
        return BING_RESULTS_URL if self.crawler.lower() == "bing" else None

    def search_with_report(
        self, description: str, keywords: list[str], k: int, out_dir: Path
    ) -> tuple[list[Candidate], list[tuple[str, str]]]:
        """Blocking search: (candidates best first, refused URLs with reasons)."""
        if k < 1:
            raise ValueError("k must be at least 1")
        query = " ".join(w.strip() for w in keywords if w.strip()) or description.strip()
        if not query:
            raise ValueError("empty description and keywords: nothing to search for")
        self.load()
        assert self._crawler_cls is not None
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.crawl_timeout_s
        collector = _Collector(out_dir, self.policy, k, deadline)
        kwargs: dict[str, Any] = {
            "downloader_cls": _hardened_downloader_cls(),
            "downloader_threads": self.threads,
            "storage": {"backend": "FileSystem", "root_dir": str(out_dir)},
            "extra_downloader_args": {"collector": collector},
        }
        template = self._template()
        if template:
            pages = max(1, -(-3 * k // RESULTS_PER_PAGE))
            kwargs["feeder_cls"] = _page_feeder_cls()
            kwargs["extra_feeder_args"] = {"template": template, "pages": pages}
        crawler = self._crawler_cls(**kwargs)
        crawler.parser.session = _PageSession(crawler.session, collector)
        failure: list[BaseException] = []

        def crawl() -> None:
            try:
                crawler.crawl(keyword=query[:200], max_num=k)
            except BaseException as exc:  # handed to the caller below
                failure.append(exc)

        # The crawl runs beside us and is waited for until the deadline only: a result
        # page or an image that drips past it is abandoned (each fetch also ends at the
        # deadline), and nothing it brings afterwards is written.
        worker = threading.Thread(target=crawl, name="mcu-web-search", daemon=True)
        worker.start()
        worker.join(max(deadline - time.monotonic(), 0.0))
        crawler.signal.set(reach_max_num=True)  # icrawler threads stop taking new work
        collector.close()
        if failure:
            raise failure[0]
        if collector.storage_error is not None:
            raise collector.storage_error
        found = collector.candidates()
        if not found and collector.pages_ok == 0 and collector.page_errors:
            raise ToolUnavailable(TOOL, f"search page unreachable: {collector.page_errors[0]}")
        return found, list(collector.refusals)

    async def search(
        self, description: str, keywords: list[str], k: int, out_dir: Path
    ) -> list[Candidate]:
        """Up to ``k`` verified images, in result order; refusals land in ``last_refusals``.

        Concurrent searches on one instance overwrite ``last_refusals``; use
        :meth:`search_with_report` when each refusal list matters.
        """
        found, refusals = await asyncio.to_thread(
            self.search_with_report, description, keywords, k, out_dir
        )
        self.last_refusals = refusals
        return found
