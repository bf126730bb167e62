"""The runtime side stands alone: nothing under edge/ imports the build side (engines/,
calibration/) or the tools, at module level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD_SIDE = ("engines", "calibration", "tools")


def imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, module) for every import in a file of `package`, relative ones resolved."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            found.append((node.lineno, ".".join(p for p in (base, node.module or "") if p)))
    return found


def test_nothing_under_edge_imports_the_build_side() -> None:
    offending = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted((ROOT / "edge").rglob("*.py"))
        for line, module in imported_modules(path, ".".join(path.relative_to(ROOT).parts[:-1]))
        if module.split(".")[0] in BUILD_SIDE
    ]
    assert not offending, "\n".join(offending)


def test_the_check_sees_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def load():\n    from engines.tensorrt_build import build_plan\n    from ..errors import UserError\n")
    assert imported_modules(sample, "edge.backends") == [(2, "engines.tensorrt_build"), (3, "edge.errors")]
