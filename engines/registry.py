"""Backbones by name: `@register_backbone` fills the registry, `create_backbone` builds one."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from edge.errors import UserError
from engines.backbone import BlockBackbone
from engines.resnet import cifar_resnet

BackboneFactory = Callable[..., BlockBackbone]
_REGISTRY: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    def decorate(factory: BackboneFactory) -> BackboneFactory:
        _REGISTRY[name] = factory
        return factory

    return decorate


class UnknownBackboneError(UserError, ValueError):
    """A backbone name the registry does not know."""


def create_backbone(name: str, **kwargs: Any) -> BlockBackbone:
    """Build a registered backbone; kwargs are its factory's (num_classes, input_shape...)."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise UnknownBackboneError(f"unknown backbone {name!r}; known: {', '.join(list_backbones())}") from None
    return factory(**kwargs)


def list_backbones(pattern: str = "*") -> list[str]:
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


for _depth in (8, 14, 20, 32, 44, 56, 110):
    register_backbone(f"resnet{_depth}")(
        lambda depth=_depth, **kw: cifar_resnet(depth, **kw)
    )


@register_backbone("tv_resnet18")
def _tv_resnet18(**kwargs: Any) -> BlockBackbone:
    from engines.torchvision_models import torchvision_resnet

    return torchvision_resnet("resnet18", **kwargs)


@register_backbone("tv_resnet34")
def _tv_resnet34(**kwargs: Any) -> BlockBackbone:
    from engines.torchvision_models import torchvision_resnet

    return torchvision_resnet("resnet34", **kwargs)


@register_backbone("tv_mobilenet_v2")
def _tv_mobilenet_v2(**kwargs: Any) -> BlockBackbone:
    from engines.torchvision_models import torchvision_mobilenet_v2

    return torchvision_mobilenet_v2(**kwargs)
