"""``mcu view --serve``: serve the view pages and the run's images read-only on 127.0.0.1.

The URL root is the deepest folder holding both the page and the run (so the pages'
relative image links work), but that folder can be ``/``: what is served is therefore an
allow-list, not the folder. A request gets a file only when, symlinks resolved, it lies
inside the page folder (pages and images) or inside the run (images only) and has one of
the suffixes below; everything else, folders included (no listings), is a 404.
"""

from __future__ import annotations

import functools
import os
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

PAGE_SUFFIXES = frozenset({".html"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp"})


class ViewHandler(SimpleHTTPRequestHandler):
    """Static files from an allow-list; no listings, no per-request log lines."""

    def __init__(
        self,
        *args: Any,
        allowed: tuple[tuple[Path, frozenset[str]], ...],
        **kwargs: Any,
    ) -> None:
        self.allowed = allowed
        super().__init__(*args, **kwargs)

    def permitted(self) -> bool:
        """Whether the request names an allowed regular file (symlinks resolved)."""
        try:
            target = Path(self.translate_path(self.path)).resolve(strict=True)
        except (OSError, RuntimeError, ValueError):
            return False
        if not target.is_file():
            return False
        suffix = target.suffix.lower()
        return any(
            target.is_relative_to(folder) and suffix in suffixes
            for folder, suffixes in self.allowed
        )

    def do_GET(self) -> None:
        if self.permitted():
            super().do_GET()
        else:
            self.send_error(HTTPStatus.NOT_FOUND)

    def do_HEAD(self) -> None:
        if self.permitted():
            super().do_HEAD()
        else:
            self.send_error(HTTPStatus.NOT_FOUND)

    def list_directory(self, path: Any) -> None:
        self.send_error(HTTPStatus.NOT_FOUND)
        return None

    def log_message(self, format: str, *args: Any) -> None:
        return


def serve_root(page: Path, run_root: Path) -> Path:
    """The URL root: the deepest folder holding both the page and the run's images."""
    return Path(os.path.commonpath([page.resolve().parent, run_root.resolve()]))


def make_server(
    root: Path,
    port: int = 0,
    *,
    page_dir: Path | None = None,
    run_root: Path | None = None,
) -> ThreadingHTTPServer:
    """A bound (not yet serving) server on 127.0.0.1 (port 0 picks a free one) whose URL
    root is ``root``; it serves pages and images inside ``page_dir`` and images inside
    ``run_root`` (both default to ``root``)."""
    page_folder = (page_dir or root).resolve()
    allowed = (
        (page_folder, PAGE_SUFFIXES | IMAGE_SUFFIXES),
        ((run_root or root).resolve(), IMAGE_SUFFIXES),
    )
    handler = functools.partial(ViewHandler, directory=str(root), allowed=allowed)
    return ThreadingHTTPServer(("127.0.0.1", port), handler)


def page_url(server: ThreadingHTTPServer, root: Path, page: Path) -> str:
    host, port = server.server_address[:2]
    relative = page.resolve().relative_to(root.resolve()).as_posix()
    return f"http://{host}:{port}/{quote(relative)}"
