"""The report page in a real browser: headless Debian chromium (Playwright) opens it from
disk; every figure decodes, nothing is fetched, no console error; the screenshot is kept
as docs/report.png (the README's tour shows it).

Needs /usr/bin/chromium (``scripts/ensure_chromium.sh``); skipped without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mcu_sim.dataset.report import write_report
from mcu_sim.viewer.sample import attach_images
from tests.test_report import SEEDS, _generate
from tests.test_viewer_browser import (  # noqa: F401 - browser is a fixture
    assert_images_loaded,
    browser,
    open_page,
    screenshot,
)

pytestmark = pytest.mark.browser
DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_report_page_in_chromium(browser: Any, tmp_path: Path) -> None:  # noqa: F811
    root = _generate(tmp_path / "run", SEEDS)
    attach_images(root, "ep-00000041")
    files = write_report(root)
    figures = json.loads(files.json.read_text())["figures"]
    watched = open_page(browser, files.html.as_uri())
    page = watched.page
    images = assert_images_loaded(page)
    assert len(images) == len(figures) >= 10
    assert all(img["src"].startswith("data:image/png;base64,") for img in images)
    for section in ("dataset", "images", "text", "near-duplicates"):
        assert page.locator(f"section#{section} h2").count() == 1
    assert page.locator("figure").count() == len(figures)
    first_row = page.locator("section#dataset table").first.locator("tbody tr").first
    assert first_row.locator("td").all_inner_texts()[:3] == ["Episodes", "3", "93,000"]
    DOCS.mkdir(exist_ok=True)
    page.set_viewport_size({"width": 1200, "height": 1400})
    page.screenshot(path=str(DOCS / "report.png"))
    assert (DOCS / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    screenshot(page, tmp_path / "report-full.png")
    watched.check()
    page.close()
