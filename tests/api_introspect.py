"""Describe a compiled Python API as JSON: run as `python tests/api_introspect.py <module>`.

Run in a subprocess (the TensorRT bindings need their libraries on LD_LIBRARY_PATH when
imported, and three versions cannot share one process). For every module attribute: a
class with its members (enum members, properties and whether they can be set, methods
with the signatures pybind11 writes into their docstrings), or a function with its
signatures.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from typing import Any


def signatures(obj: Any) -> list[str]:
    """pybind11's signature lines (`name(a: int, b: str = '') -> T`, one per overload)."""
    name = getattr(obj, "__name__", "")
    lines = (obj.__doc__ or "").splitlines()
    found = []
    for line in lines:
        text = line.strip()
        if text[:1].isdigit() and ". " in text:
            text = text.split(". ", 1)[1]  # "2. name(...) -> T" of an overload
        if text.startswith(f"{name}(") and "->" in text and not text.startswith(f"{name}(*args, **kwargs)"):
            found.append(text)
    return found


def describe_class(cls: type) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for attr in dir(cls):
        if attr.startswith("__") and attr != "__init__":
            continue
        static = inspect.getattr_static(cls, attr)
        if isinstance(static, property):
            members[attr] = {"kind": "property", "settable": static.fset is not None}
        elif isinstance(static, (staticmethod, classmethod)):
            members[attr] = {"kind": "static", "signatures": signatures(getattr(cls, attr))}
        elif callable(static):
            members[attr] = {"kind": "method", "signatures": signatures(static)}
        else:
            members[attr] = {"kind": "value"}
    enum = sorted(getattr(cls, "__members__", {}) or {})
    return {"kind": "class", "members": members, "enum": enum}


def describe(module_name: str) -> dict[str, Any]:
    module = importlib.import_module(module_name)
    api: dict[str, Any] = {}
    for name in dir(module):
        if name.startswith("__") and name != "__version__":
            continue
        obj = getattr(module, name)
        if isinstance(obj, type):
            api[name] = describe_class(obj)
        elif callable(obj):
            api[name] = {"kind": "function", "signatures": signatures(obj)}
        else:
            api[name] = {"kind": "value"}
    return {"module": module_name, "version": str(getattr(module, "__version__", "")), "api": api}


if __name__ == "__main__":
    json.dump(describe(sys.argv[1]), sys.stdout)
