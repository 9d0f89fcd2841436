"""A tiny image-search site on 127.0.0.1 for tests: a result page in the format icrawler's
Bing parser reads, linking to a few small JPEGs served by the same server. Every search
query is recorded, so a test can check what the web search asked for."""

from __future__ import annotations

import html
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DEFAULT_COLORS = ((200, 20, 20), (20, 200, 20))


def jpeg(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG")
    return buffer.getvalue()


@dataclass
class ImageSite:
    """``search_url`` is the template for ``images.web_search.search_url``."""

    search_url: str
    queries: list[str] = field(default_factory=list)


def _handler(site: ImageSite, images: dict[str, bytes]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            if parts.path == "/search":
                site.queries.append(parse_qs(parts.query).get("q", [""])[0])
                links = "".join(
                    '<div class="imgpt"><a class="iusc" m="'
                    + html.escape(
                        json.dumps({"murl": base + p, "turl": base + p}, separators=(",", ":"))
                    )
                    + '" href="#">x</a></div>'
                    for p in images
                )
                body, kind = f"<html><body>{links}</body></html>".encode(), "text/html"
            elif parts.path in images:
                body, kind = images[parts.path], "image/jpeg"
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextmanager
def serve_image_site(
    colors: tuple[tuple[int, int, int], ...] = DEFAULT_COLORS,
) -> Iterator[ImageSite]:
    """Serve the site until the block ends; one image per colour."""
    images = {f"/img{i}.jpg": jpeg(color) for i, color in enumerate(colors)}
    site = ImageSite(search_url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(site, images))
    site.search_url = (
        f"http://127.0.0.1:{server.server_address[1]}/search?q={{query}}&first={{offset}}"
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
