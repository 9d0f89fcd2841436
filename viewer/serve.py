"""``mcu view --serve``: serve a folder read-only on 127.0.0.1 with the standard library."""

from __future__ import annotations

import functools
import os
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote


class QuietHandler(SimpleHTTPRequestHandler):
    """Static files only; no per-request log lines on the terminal."""

    def log_message(self, format: str, *args: Any) -> None:
        return


def serve_root(page: Path, run_root: Path) -> Path:
    """The folder to serve: the deepest one holding both the page and the run's images."""
    return Path(os.path.commonpath([page.resolve().parent, run_root.resolve()]))


def make_server(root: Path, port: int = 0) -> ThreadingHTTPServer:
    """A bound (not yet serving) server for ``root`` on 127.0.0.1; port 0 picks a free one."""
    handler = functools.partial(QuietHandler, directory=str(root))
    return ThreadingHTTPServer(("127.0.0.1", port), handler)


def page_url(server: ThreadingHTTPServer, root: Path, page: Path) -> str:
    host, port = server.server_address[:2]
    relative = page.resolve().relative_to(root.resolve()).as_posix()
    return f"http://{host}:{port}/{quote(relative)}"
