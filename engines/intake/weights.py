"""The user's weights: a state_dict file, or a checkpoint dict holding one under a common key."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edge.atomic import sha256_file
from edge.errors import UserError

STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
# Wrappers that prefix every key: DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class WeightsError(UserError):
    """A weights file cannot be read or does not fit the network."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad or unsafe file
        raise WeightsError(f"{path}: not a readable weights file ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    state = _find_state_dict(payload)
    if state is None:
        keys = ", ".join(STATE_DICT_KEYS)
        raise WeightsError(f"{path}: holds no state_dict (a dict of tensors, or a checkpoint with one under {keys})")
    return _strip_wrapper_prefix(state)


def load_weights(net: nn.Module, path: Path) -> str:
    """Load `path` into `net`, keys matched strictly; returns the file's sha256."""
    state = read_state_dict(path)
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    resized = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or resized:
        raise WeightsError(f"{path}: weights do not match the network: " + "; ".join(
            f"{what} ({len(keys)}): {_first(keys)}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", resized)) if keys
        ))
    net.load_state_dict(state)
    return sha256_file(Path(path))


def _find_state_dict(payload: object) -> dict[str, torch.Tensor] | None:
    if _is_state_dict(payload):
        return payload  # type: ignore[return-value]
    if isinstance(payload, dict):
        for key in STATE_DICT_KEYS:
            if _is_state_dict(payload.get(key)):
                return payload[key]
    return None


def _is_state_dict(value: object) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def _strip_wrapper_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _first(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")
