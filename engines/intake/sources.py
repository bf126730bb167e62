"""Where a network comes from, by a source string; every source ends as a BlockBackbone.

  resnet20, tv_resnet18, ...          this project's zoo (engines.registry): block structure declared
  torchvision:<name>                  any torchvision classification model, weights=None
  timm:<name>                         any timm model, pretrained=False (the `timm` extra)
  module:<package.module>:<factory>   your own nn.Module class or factory

Networks from the last three are traced and cut wherever exactly one tensor crosses
(engines.intake.trace); the zoo's networks already come as blocks. The user's weights
are loaded before tracing, so they reach every segment.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from edge.deps import require
from edge.errors import UserError
from engines.backbone import BlockBackbone, default_normalization

NetworkFactory = Callable[[str, int, dict[str, Any]], nn.Module]
_FACTORIES: dict[str, NetworkFactory] = {}


class SourceError(UserError):
    """A source string names no network this project can build."""


def register_source(kind: str) -> Callable[[NetworkFactory], NetworkFactory]:
    def decorate(factory: NetworkFactory) -> NetworkFactory:
        _FACTORIES[kind] = factory
        return factory

    return decorate


@dataclass(frozen=True)
class Source:
    kind: str  # "zoo" or a registered kind
    name: str

    @classmethod
    def parse(cls, text: str) -> Source:
        kind, sep, name = text.partition(":")
        if not sep:
            return cls("zoo", text)
        if kind not in _FACTORIES or not name:
            kinds = ", ".join(f"{k}:<name>" for k in sorted(_FACTORIES))
            raise SourceError(f"unknown source {text!r}: use a zoo name or {kinds}")
        return cls(kind, name)

    @property
    def traced(self) -> bool:
        return self.kind != "zoo"


def create_network(source: str, num_classes: int, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """The plain network a (non-zoo) source names, with random weights."""
    parsed = Source.parse(source)
    if not parsed.traced:
        raise SourceError(f"{source!r} is a zoo name: build it with build_backbone")
    return _FACTORIES[parsed.kind](parsed.name, num_classes, dict(kwargs or {})).eval()


def build_backbone(
    source: str,
    num_classes: int,
    input_shape: Sequence[int],
    kwargs: dict[str, Any] | None = None,
    weights: Path | None = None,
) -> BlockBackbone:
    """The network a source names as a BlockBackbone. `kwargs` may hold `mean` / `std`
    (the normalization baked into the graph: images come in [0, 1]) and the source's own
    keyword arguments; `weights` is a state_dict file for the network as the user built it."""
    from engines.registry import create_backbone

    kwargs = dict(kwargs or {})
    shape = tuple(int(d) for d in input_shape)
    parsed = Source.parse(source)
    if not parsed.traced:
        if weights is not None:
            raise SourceError(f"{source!r} is a zoo name: its weights come from an edge-train checkpoint")
        try:
            return create_backbone(parsed.name, num_classes=num_classes, input_shape=shape, **kwargs)
        except ValueError as exc:
            raise SourceError(str(exc)) from exc
    return traced_network(source, num_classes, shape, kwargs, weights)[1]


def traced_network(
    source: str, num_classes: int, input_shape: Sequence[int], kwargs: dict[str, Any] | None = None,
    weights: Path | None = None,
) -> tuple[nn.Module, BlockBackbone]:
    """The network a (non-zoo) source names, and its traced BlockBackbone (sharing its
    modules and weights), to compare one with the other."""
    from engines.intake.trace import trace_backbone
    from engines.intake.weights import load_weights

    kwargs = dict(kwargs or {})
    shape = tuple(int(d) for d in input_shape)
    norm = default_normalization(shape[0])
    norm = {"mean": list(kwargs.pop("mean", norm["mean"])), "std": list(kwargs.pop("std", norm["std"]))}
    net = create_network(source, num_classes, kwargs)
    if weights is not None:
        load_weights(net, weights)
    kind = Source.parse(source).kind
    return net, trace_backbone(net, shape, norm, source=source, leaf_types=_leaf_types(kind), autowrap=_autowrap(kind))


def _leaf_types(kind: str) -> tuple[type, ...]:
    """Modules that tracing must not enter (timm marks its own untraceable ones)."""
    if kind != "timm":
        return ()
    from timm.models import _features_fx

    return tuple(_features_fx.get_notrace_modules())  # type: ignore[no-untyped-call]


def _autowrap(kind: str) -> tuple[object, ...]:
    """Functions that tracing records as calls without entering them (timm's own list)."""
    if kind != "timm":
        return ()
    from timm.models import _features_fx

    return tuple(_features_fx.get_notrace_functions())  # type: ignore[no-untyped-call]


@register_source("torchvision")
def _torchvision(name: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    models = require("torchvision.models", "vision", "torchvision sources")
    known = models.list_models(module=models)
    if name not in known:
        raise SourceError(f"torchvision has no classification model {name!r}{_close(name, known)}")
    return _call(models.get_model, f"torchvision:{name}", name, weights=None, num_classes=num_classes, **kwargs)


@register_source("timm")
def _timm(name: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    timm = require("timm", "timm", "timm sources")
    if not timm.is_model(name):
        raise SourceError(f"timm has no model {name!r}{_close(name, timm.list_models())}")
    return _call(timm.create_model, f"timm:{name}", name, pretrained=False, num_classes=num_classes, **kwargs)


@register_source("module")
def _module(name: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    """`package.module:factory`; the factory gets `num_classes` if it takes it."""
    module_name, sep, attr = name.rpartition(":")
    if not sep or not module_name or not attr:
        raise SourceError(f"module source {name!r} must be module:<package.module>:<factory>")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise SourceError(f"module:{name}: cannot import ({type(exc).__name__}: {exc})") from exc
    if _accepts(factory, "num_classes") and "num_classes" not in kwargs:
        kwargs["num_classes"] = num_classes
    net = _call(factory, f"module:{name}", **kwargs)
    if not isinstance(net, nn.Module):
        raise SourceError(f"module:{name} returned {type(net).__name__}, not a torch nn.Module")
    return net


def _call(factory: Callable[..., Any], source: str, *args: Any, **kwargs: Any) -> Any:
    try:
        return factory(*args, **kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise SourceError(f"{source}: cannot build it with {kwargs or 'no arguments'} ({type(exc).__name__}: {exc})") from exc


def _accepts(factory: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _close(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""
