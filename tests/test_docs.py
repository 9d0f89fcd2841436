"""The graphs drawn in docs/architecture.md are the compiled graphs' own drawings."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"


def _draw_graphs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("draw_graphs", REPO / "scripts/draw_graphs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_diagrams_match_the_graphs() -> None:
    committed = DOC.read_text(encoding="utf-8")
    assert _draw_graphs().redraw(committed) == committed, (
        "docs/architecture.md shows stale graphs: run python scripts/draw_graphs.py"
    )


def test_a_stale_diagram_is_redrawn_and_check_says_so(tmp_path: Path, capsys) -> None:
    draw = _draw_graphs()
    committed = DOC.read_text(encoding="utf-8")
    assert "\tsession -.-> align_sharing;\n" in committed
    stale = tmp_path / "architecture.md"
    stale.write_text(committed.replace("\tsession -.-> align_sharing;\n", ""), encoding="utf-8")
    assert draw.main(["--check", "--doc", str(stale)]) == 1
    assert "stale: run python scripts/draw_graphs.py" in capsys.readouterr().err
    assert draw.main(["--doc", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == committed
    assert draw.main(["--check", "--doc", str(stale)]) == 0


def test_a_doc_without_the_markers_is_an_error() -> None:
    with pytest.raises(ValueError, match="graph:episode"):
        _draw_graphs().redraw("# Architecture\n")
