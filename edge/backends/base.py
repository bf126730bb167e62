"""The backend seam: run one segment engine, keep its features where they live.

Features are opaque to the runtime (a numpy array on the CPU, a device buffer on a
GPU), so a GPU backend keeps them in device memory between segments and copies to the
host only the exit's probabilities and score (docs/architecture.md, decision 4). Batch
compaction goes through `take`, which a GPU backend implements as a device gather.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from edge.errors import BackendError
from edge.manifest import Manifest

StaticEngine = Callable[[np.ndarray], np.ndarray]  # host images -> host probabilities

Features = Any  # backend-owned; the runtime only hands it back


class ExitOutput(NamedTuple):
    features: Features | None  # None after the last segment
    probs: np.ndarray  # host, (n, classes) float32
    scores: np.ndarray  # host, (n,) float32: the exit's score under the asked criterion (lower = more confident)


class RoutedOutput(NamedTuple):
    """A segment run for per-input depth: ExitOutput's fields (probs and scores None with
    the exit off) and `skip_next`, host (n,) float32: the depth gate's say on the next stage."""

    features: Features
    probs: np.ndarray | None
    scores: np.ndarray | None
    skip_next: np.ndarray


class Backend(ABC):
    """One instance serves one manifest; `run` must be safe to call from several threads."""

    name: str = "abstract"

    @abstractmethod
    def load(self, manifest: Manifest, precision: str = "fp32", skip: bool = False) -> None:
        """Create an engine per segment from the files of `precision`; raise ManifestError
        naming a file that will not load. With `skip` (adaptive depth), segments that have
        a base variant load it instead; the others load their only engine."""

    def supports(self, manifest: Manifest, precision: str) -> bool:
        """Whether this backend can load the manifest's `precision` engines (the runtime
        loads only those unless asked for others)."""
        return True

    def spawn(self) -> Backend:
        """A new, unloaded backend with this one's options, for another set of engines
        (precision, or base variants). It must share no engine with this one (closing
        either leaves the other working) but the same feature space: features one
        produces, the other's engines take."""
        raise NotImplementedError(f"the {self.name} backend cannot load a second set of engines")

    def load_static(self, manifest: Manifest) -> StaticEngine:
        """The manifest's static model as one engine (for static operating points)."""
        raise BackendError(f"the {self.name} backend cannot run the static engine")

    def load_whole(self, manifest: Manifest) -> StaticEngine:
        """The chain's own network as one engine (for points with every exit off)."""
        raise BackendError(f"the {self.name} backend cannot run the whole chain as one engine")

    @abstractmethod
    def upload(self, images: np.ndarray) -> Features:
        """Host images (already validated) -> the first segment's input."""

    @abstractmethod
    def run(self, index: int, features: Features, criterion: str = "entropy") -> ExitOutput:
        """Run segment `index` on `features`; `scores` are the named criterion's. The last
        segment accepts every criterion an early one has (its score is never compared)."""

    def advance(self, index: int, features: Features) -> Features:
        """Run segment `index` with its exit switched off: only the features it hands on.
        Backends that can skip the exit head (a pruned engine) override this."""
        return self.run(index, features).features

    def run_routed(self, index: int, features: Features, criterion: str | None) -> RoutedOutput:
        """Run segment `index` and read its depth gate (criterion None: the exit is off).
        Backends without per-input depth say so."""
        raise BackendError(f"the {self.name} backend cannot route per-input depth (depth letter G); use fixed depths")

    @abstractmethod
    def take(self, features: Features, rows: np.ndarray) -> Features:
        """Keep only `rows` (int indices) of a feature batch, where the features live."""

    def close(self) -> None:  # noqa: B027 - a hook: backends with nothing to release need not override it
        """Release engines and buffers."""
