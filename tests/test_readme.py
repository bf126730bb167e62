"""The README as the front door: short, its set-up commands the ones CI runs, its Python
example run for real, every command's flags known to that command, every link there."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def commands() -> list[list[str]]:
    """Every command line of the README's shell blocks (continuations joined, comments dropped)."""
    lines = []
    for language, body in BLOCKS:
        if language == "sh":
            lines += [shlex.split(line, comments=True) for line in body.replace("\\\n", " ").splitlines() if line.strip()]
    return [words for line in lines for words in _split_and(line)]


def _split_and(words: list[str]) -> list[list[str]]:
    parts, current = [], []
    for word in words:
        if word == "&&":
            parts.append(current)
            current = []
        else:
            current.append(word)
    return [*parts, current]


def test_the_readme_is_a_front_door_with_the_two_set_up_commands_first() -> None:
    assert len(README.splitlines()) <= 150
    first, second = [body.strip() for language, body in BLOCKS[:2]]
    assert first.endswith("edge-quickstart") and "dataset-fashion-mnist" in first
    assert second.endswith("python -m pytest")
    ci = (ROOT / ".ci/run").read_text()
    assert second.replace("pip install -e", "pip install -q -e") + " -q" in ci  # CI runs the README's test command


def test_the_readme_python_example_runs(built_dir: Path, real_images: np.ndarray, capsys: pytest.CaptureFixture[str]) -> None:
    (code,) = [body for language, body in BLOCKS if language == "python"]
    code = code.replace('"runs/quickstart/engines"', repr(str(built_dir)))
    exec(compile(code, "README.md", "exec"), {"images": real_images[:4]})  # the README's own example
    assert capsys.readouterr().out.strip()


def test_every_readme_command_exists_and_knows_its_flags() -> None:
    tools = [words for words in commands() if words and Path(words[0]).name in SCRIPTS]
    assert {Path(w[0]).name for w in tools} >= {"edge-quickstart", "edge-calibrate", "edge-intake", "edge-train", "edged"}
    helps: dict[str, str] = {}
    for words in tools:
        name = Path(words[0]).name
        if name not in helps:
            module, function = SCRIPTS[name].split(":")
            run = subprocess.run([sys.executable, "-c", f"import sys; sys.argv = ['{name}', '--help']; from {module} import {function}; {function}()"],
                                 capture_output=True, text=True, cwd=ROOT, timeout=300)
            helps[name] = run.stdout
        for flag in (w.split("=")[0] for w in words[1:] if w.startswith("--")):
            assert flag in helps[name], f"{name} does not know {flag}"


def test_every_tool_in_the_table_is_installed_and_every_link_resolves() -> None:
    first_cells = [line.split("|")[1] for line in README.splitlines() if line.startswith("| `")]
    named = {name for cell in first_cells for name in re.findall(r"`([^`]+)`", cell)}
    assert named and named <= set(SCRIPTS), named - set(SCRIPTS)
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        assert (ROOT / target).exists(), target
