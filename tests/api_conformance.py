"""Check this project's device-side calls against the real packages, on a machine
without a GPU: TensorRT (its bindings of 10.3, 10.13, 11.4), pycuda (its sources) and
jetson-stats' jtop client (the package itself).

The bindings wheels on PyPI (`tensorrt-cu12-bindings`, `tensorrt-cu13-bindings`) are
real and small, but their `*-libs` wheels download from a host this machine cannot
reach, so `import tensorrt` fails on `libnvinfer.so.N`. The bindings need only a few
factory entry points from those libraries: stand-in libraries exporting them (returning
NULL) let the module import, so every class, enum member, property and signature can be
read (tests/api_introspect.py); nothing can be built or run.

The project's code is read with `ast`. Its TensorRT objects are plain names in the
TensorRT modules (`builder`, `config`, `engine`, ...: RECEIVERS), or names assigned from
a call whose return type the bindings state. Checked: every `trt.X` and `trt.X.Y`
exists; every call on a TensorRT object or class matches one of its signatures
(argument count, keyword names); every attribute read exists and every attribute
written is a settable property. `getattr(trt.X, name, default)` is a use the code
feature-detects, so it is not required.

pycuda does not build without a complete CUDA: the names the backend reads on pycuda
objects are looked up in the sdist's driver wrapper (C++) and driver.py. jetson-stats is
pure Python: its jtop class is inspected in a subprocess, from a private install.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("EDGE_API_CACHE", Path.home() / ".cache" / "edge-dynamic" / "tensorrt-api"))

# The TensorRT versions a Jetson meets: JetPack 6.x (10.3), the last 10.x, and 11.x.
VERSIONS = {
    "10.3": ("tensorrt-cu12-bindings==10.3.0", 10),
    "10.13": ("tensorrt-cu12-bindings==10.13.0.35", 10),
    "11.4": ("tensorrt-cu13-bindings==11.4.0.106", 11),
}
SOURCES = ("engines/tensorrt_build.py", "edge/backends/tensorrt_backend.py", "edge/backends/tensorrt_device.py")
MODULE = "trt"
RECEIVERS = {
    "logger": "Logger", "builder": "Builder", "network": "INetworkDefinition", "parser": "OnnxParser",
    "config": "IBuilderConfig", "profile": "IOptimizationProfile", "cache": "ITimingCache",
    "runtime": "Runtime", "engine": "ICudaEngine", "context": "IExecutionContext",
}
_STUB_SYMBOLS = (  # what the bindings import from libnvinfer, libnvonnxparser and libnvinfer_plugin
    "createInferBuilder_INTERNAL", "createInferRefitter_INTERNAL", "createInferRuntime_INTERNAL",
    "createNvOnnxParserRefitter_INTERNAL", "createNvOnnxParser_INTERNAL", "getBuilderPluginRegistry",
    "getNvOnnxParserVersion", "getPluginRegistry", "initLibNvInferPlugins",
)


# --- the bindings -------------------------------------------------------------------------------

def bindings_api(version: str) -> dict[str, Any]:
    """The introspected API of one TensorRT version (cached as JSON)."""
    requirement, major = VERSIONS[version]
    target = CACHE / version
    script = ROOT / "tests" / "api_introspect.py"
    described = target / f"api-{hashlib.sha256(script.read_bytes()).hexdigest()[:12]}.json"  # a new describer, a new file
    if described.is_file():
        return json.loads(described.read_text())  # type: ignore[no-any-return]
    wheel_dir = target / "wheel"
    if not wheel_dir.is_dir():
        download = target / "download"
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(download), requirement],
                       check=True, capture_output=True, text=True)
        [wheel] = download.glob("*.whl")
        shutil.unpack_archive(str(wheel), str(wheel_dir), format="zip")
    libs = stub_libraries(target / "libs", major)
    env = {**os.environ, "LD_LIBRARY_PATH": f"{libs}:{os.environ.get('LD_LIBRARY_PATH', '')}", "PYTHONPATH": str(wheel_dir)}
    done = subprocess.run([sys.executable, str(script), "tensorrt_bindings"],
                          env=env, check=True, capture_output=True, text=True)
    described.write_text(done.stdout)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def stub_libraries(folder: Path, major: int) -> Path:
    """libnvinfer.so.N, libnvonnxparser.so.N and libnvinfer_plugin.so.N exporting the
    factories as NULL-returning functions, built with gcc."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "stub.c"
    source.write_text("".join(f"void *{name}(void) {{ return 0; }}\n" for name in _STUB_SYMBOLS))
    for lib in ("nvinfer", "nvonnxparser", "nvinfer_plugin"):
        out = folder / f"lib{lib}.so.{major}"
        if not out.is_file():
            subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(source)], check=True)
    return folder


# --- signatures ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    name: str
    has_default: bool
    kind: str = "normal"  # normal, positional (before "/"), keyword (after "*"), star, starstar


@dataclass(frozen=True)
class Signature:
    params: tuple[Param, ...]
    returns: str  # the class name of the return type, or ""

    def accepts(self, positional: int, keywords: list[str]) -> bool:
        params = list(self.params)
        if any(p.kind == "star" for p in params):
            positional_ok = True
        else:
            positional_ok = positional <= sum(1 for p in params if p.kind in ("normal", "positional"))
        if not positional_ok:
            return False
        filled = {p.name for p in [p for p in params if p.kind in ("normal", "positional")][:positional]}
        named = {p.name for p in params if p.kind in ("normal", "keyword")}
        takes_any = any(p.kind == "starstar" for p in params)
        if any(k in filled or (k not in named and not takes_any) for k in keywords):
            return False
        required = {p.name for p in params if not p.has_default and p.kind in ("normal", "positional", "keyword")}
        return required <= filled | set(keywords)


def parse_signature(text: str, bound: bool) -> Signature:
    """`name(self: T, a: int, b: str = '') -> R`; `bound` drops the first (self) parameter."""
    match = re.match(r"^[\w.]+\((.*)\)\s*->\s*(.+)$", text)
    if not match:
        raise ValueError(f"not a signature: {text!r}")
    params, keyword_only = [], False
    for part in _split_top_level(match.group(1)):
        part = part.strip()
        if not part:
            continue
        if part == "/":
            params = [Param(p.name, p.has_default, "positional") for p in params]
        elif part == "*":
            keyword_only = True
        elif part.startswith("**"):
            params.append(Param(part[2:].split(":")[0], True, "starstar"))
        elif part.startswith("*"):
            params.append(Param(part[1:].split(":")[0], True, "star"))
            keyword_only = True
        else:
            name = part.split(":")[0].split("=")[0].strip()
            params.append(Param(name, "=" in part, "keyword" if keyword_only else "normal"))
    if bound and params:
        params = params[1:]
    return Signature(tuple(params), match.group(2).strip().split(".")[-1])


def _split_top_level(text: str) -> Iterator[str]:
    depth, start = 0, 0
    for i, char in enumerate(text):
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        elif char == "," and depth == 0:
            yield text[start:i]
            start = i + 1
    yield text[start:]


# --- the project's uses ----------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


class _Checker(ast.NodeVisitor):
    def __init__(self, api: dict[str, Any], filename: str) -> None:
        self.api = api["api"]
        self.filename = filename
        self.problems: list[Problem] = []
        self.types: dict[str, str] = dict(RECEIVERS)
        self.checked = 0

    # types -----------------------------------------------------------------------------------
    def type_of(self, node: ast.AST) -> str | None:
        """The bindings class an expression evaluates to, where the code shows it."""
        if isinstance(node, ast.Name):
            return self.types.get(node.id)
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and _is_module(func.value) and self._kind(func.attr) == "class":
                return func.attr  # trt.Builder(...) makes a Builder
            if isinstance(func, ast.Attribute):
                owner = self.type_of(func.value)
                member = self._member(owner, func.attr) if owner else None
                returns = {parse_signature(s, True).returns for s in (member or {}).get("signatures", [])}
                found = [r for r in returns if self._kind(r) == "class"]
                return found[0] if len(found) == 1 else None
        return None

    def _kind(self, name: str) -> str | None:
        entry = self.api.get(name)
        return entry["kind"] if entry else None

    def _member(self, cls: str, name: str) -> dict[str, Any] | None:
        return self.api.get(cls, {}).get("members", {}).get(name)  # type: ignore[no-any-return]

    def report(self, node: ast.AST, what: str) -> None:
        self.problems.append(Problem(f"{self.filename}:{getattr(node, 'lineno', '?')}", what))

    # visits ----------------------------------------------------------------------------------
    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        for target in node.targets:
            if isinstance(target, ast.Attribute):
                self._check_write(target)
            elif isinstance(target, ast.Name) and target.id not in RECEIVERS:
                typed = self.type_of(node.value)
                if typed:
                    self.types[target.id] = typed

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id == "getattr" and node.args and _is_trt_chain(node.args[0]):
            self._check_getattr(node)
            for arg in node.args[1:]:
                self.visit(arg)
            return
        if isinstance(func, ast.Attribute):
            self._check_call(node, func)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.ctx, ast.Load):
            self._check_read(node)
        self.generic_visit(node)

    # checks ----------------------------------------------------------------------------------
    def _check_read(self, node: ast.Attribute) -> None:
        if node.attr.startswith("__"):
            return
        if _is_module(node.value):
            self.checked += 1
            if node.attr not in self.api:
                self.report(node, f"{MODULE}.{node.attr} does not exist")
            return
        if isinstance(node.value, ast.Attribute) and _is_module(node.value.value):
            owner = node.value.attr
            if owner in self.api and self._kind(owner) == "class":
                self.checked += 1
                if self._member(owner, node.attr) is None:
                    self.report(node, f"{MODULE}.{owner}.{node.attr} does not exist")
            return
        owner = self.type_of(node.value)
        if owner:
            self.checked += 1
            if self._member(owner, node.attr) is None:
                self.report(node, f"{owner} has no attribute {node.attr!r}")

    def _check_write(self, target: ast.Attribute) -> None:
        owner = self.type_of(target.value)
        if not owner:
            return
        self.checked += 1
        member = self._member(owner, target.attr)
        if member is None:
            self.report(target, f"{owner} has no attribute {target.attr!r} to set")
        elif member["kind"] != "property" or not member.get("settable"):
            self.report(target, f"{owner}.{target.attr} cannot be set")

    def _check_call(self, node: ast.Call, func: ast.Attribute) -> None:
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            return  # *args / **kwargs: not checkable here
        if _is_module(func.value):
            if self._kind(func.attr) == "class":
                self._match(node, func.attr, "__init__", f"{MODULE}.{func.attr}(...)")
            elif self._kind(func.attr) == "function":
                self._match_signatures(node, self.api[func.attr]["signatures"], False, f"{MODULE}.{func.attr}(...)")
            return
        owner = self.type_of(func.value)
        if owner:
            self._match(node, owner, func.attr, f"{owner}.{func.attr}(...)")

    def _match(self, node: ast.Call, owner: str, method: str, label: str) -> None:
        member = self._member(owner, method)
        if member is None:
            return  # a missing method is reported by the attribute read
        if member["kind"] not in ("method", "static"):
            self.report(node, f"{label}: {owner}.{method} is a {member['kind']}, not callable")
            return
        self._match_signatures(node, member["signatures"], member["kind"] == "method", label)

    def _match_signatures(self, node: ast.Call, texts: list[str], bound: bool, label: str) -> None:
        if not texts:
            return  # the bindings state no signature
        self.checked += 1
        keywords = [k.arg for k in node.keywords if k.arg]
        if not any(parse_signature(t, bound).accepts(len(node.args), keywords) for t in texts):
            given = f"{len(node.args)} positional" + (f" and {', '.join(keywords)}" if keywords else "")
            self.report(node, f"{label} called with {given}; the bindings take {' | '.join(_short(t) for t in texts)}")

    def _check_getattr(self, node: ast.Call) -> None:
        if len(node.args) >= 3 or not isinstance(node.args[1], ast.Constant):
            return  # feature-detected (a default), or a name the code computes
        owner = node.args[0]
        if isinstance(owner, ast.Attribute) and _is_module(owner.value):
            self.checked += 1
            if self._member(owner.attr, node.args[1].value) is None:
                self.report(node, f"{MODULE}.{owner.attr}.{node.args[1].value} does not exist")


def _is_module(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == MODULE


def _is_trt_chain(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and _is_module(node.value)


def _short(signature: str) -> str:
    return re.sub(r"\w+(?:\.\w+)+\.(\w+)", r"\1", signature.split("->")[0]).strip()


def check_source(source: str, api: dict[str, Any], filename: str = "<source>") -> tuple[list[Problem], int]:
    """Problems in one file's uses of TensorRT, and how many uses were checked."""
    checker = _Checker(api, filename)
    checker.visit(ast.parse(source, filename))
    return checker.problems, checker.checked


def check_project(api: dict[str, Any]) -> tuple[list[Problem], int]:
    problems, checked = [], 0
    for relative in SOURCES:
        found, count = check_source((ROOT / relative).read_text(), api, relative)
        problems += found
        checked += count
    return problems, checked


# --- jetson-stats ----------------------------------------------------------------------------------

JTOP_REQUIREMENT = "jetson-stats==7.2.2"
_JTOP_DESCRIBE = """
import inspect, json
from jtop import jtop
out = {}
for name in NAMES:
    static = inspect.getattr_static(jtop, name, None)
    if isinstance(static, property):
        out[name] = {"kind": "property", "settable": static.fset is not None}
    elif callable(static):
        params = [[p.name, repr(p.default)] for p in inspect.signature(static).parameters.values()]
        out[name] = {"kind": "method", "params": params}
print(json.dumps(out))
"""


def jtop_client_api(names: list[str]) -> dict[str, Any]:
    """The real jetson-stats client class's methods (parameters, defaults) and properties
    among `names`, from the package installed into a cache folder (pure Python)."""
    target = CACHE.parent / JTOP_REQUIREMENT.replace("==", "-")
    if not (target / "jtop").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target), JTOP_REQUIREMENT],
                       check=True, capture_output=True, text=True)
    script = f"NAMES = {names!r}\n{_JTOP_DESCRIBE}"
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(target)},
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


# --- pycuda, against its sources (it builds only where CUDA is complete) ----------------------------

PYCUDA_SDIST = "pycuda-2026.1.tar.gz"
PYCUDA_FILES = ("edge/backends/tensorrt_backend.py", "edge/backends/tensorrt_device.py")
# How this project's code names pycuda objects: the module, and what it hands back.
PYCUDA_RECEIVERS = {"cuda", "self._cuda", "device", "lane.stream", "buffer", "self._context", "cuda.Device", "cuda.Device(0)"}
_PYCUDA_NAMES = (
    r'py::def\(\s*"(\w+)"', r'\.def\(\s*"(\w+)"', r'\.def_static\(\s*"(\w+)"', r'\.staticmethod\(\s*"(\w+)"',
    r'\.add_property\(\s*"(\w+)"', r'DEF_SIMPLE_(?:METHOD|FUNCTION|RO_MEMBER|RW_MEMBER)(?:_WITH_ARGS)?\((\w+)',
    r'py::class_<[^;]*?>\s*\(\s*"(\w+)"', r'^\s*\("(\w+)",\s*py::init',
)


def pycuda_names() -> set[str]:
    """Every function, class, method and property pycuda's driver module defines: from
    the C++ wrapper (boost.python) and pycuda/driver.py of the sdist on PyPI."""
    import tarfile
    import urllib.request

    sdist = CACHE.parent / PYCUDA_SDIST
    if not sdist.is_file():
        request = urllib.request.Request("https://pypi.org/simple/pycuda/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(request, timeout=120) as answer:
            url = next(f["url"] for f in json.load(answer)["files"] if f["filename"] == PYCUDA_SDIST)
        sdist.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=300) as answer:
            sdist.write_bytes(answer.read())
    names: set[str] = set()
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            if member.name.endswith(("src/wrapper/wrap_cudadrv.cpp", "pycuda/driver.py")):
                text = archive.extractfile(member).read().decode()  # type: ignore[union-attr]
                for pattern in _PYCUDA_NAMES:
                    names |= set(re.findall(pattern, text, re.MULTILINE))
                if member.name.endswith(".py"):  # module-level defs, classes and assignments
                    for groups in re.findall(r"^(?:def|class)\s+(\w+)|^(\w+)\s*=", text, re.MULTILINE):
                        names |= {g for g in groups if g}
    return names


def pycuda_uses(source: str, filename: str = "<source>") -> list[tuple[str, str]]:
    """(where, name) for every attribute this code reads on a pycuda object."""
    uses = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) in PYCUDA_RECEIVERS:
            uses.append((f"{filename}:{node.lineno}", node.attr))
    return uses


def check_pycuda(names: set[str], sources: dict[str, str] | None = None) -> tuple[list[Problem], int]:
    sources = sources if sources is not None else {f: (ROOT / f).read_text() for f in PYCUDA_FILES}
    uses = [use for filename, text in sources.items() for use in pycuda_uses(text, filename)]
    problems = [Problem(where, f"pycuda has no {name!r}") for where, name in uses if name not in names]
    return problems, len(uses)
