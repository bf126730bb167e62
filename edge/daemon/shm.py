"""Triton's system shared-memory extension: clients on the same board register a POSIX
shared-memory object once, then name a region, offset and size instead of sending bytes.

The daemon never maps a client's object: a client that shrinks it would turn the next
read of a mapping into SIGBUS, which kills the process. It keeps the file descriptor and
copies with preadv/pwrite, which return short (an error for that one request) instead.
Only objects under the shared-memory folder are reachable (no path in the key, no
symlink), with the daemon's own permissions: a client names only what its board's users
created and the daemon's user may open.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import UserError

SHM_DIR = Path("/dev/shm")  # where shm_open keeps its objects on Linux
KEY = re.compile(r"^/?(?!\.{1,2}$)[A-Za-z0-9_.-]{1,255}$")  # shm_open's portable names: one component


class SharedMemoryError(UserError):
    """A registration or a region reference that cannot be honoured (HTTP 400)."""


class UnknownRegion(SharedMemoryError):
    """A request names a region that is not registered (HTTP 404 on status)."""


@dataclass(frozen=True)
class Region:
    name: str
    key: str
    offset: int  # into the object, where the region starts
    byte_size: int
    fd: int
    inode: tuple[int, int]  # (device, inode) at registration: a recreated object is another one

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


@dataclass(frozen=True)
class RegionRef:
    """A request's use of a region: where its tensor starts and how many bytes it takes."""

    region: str
    byte_size: int
    offset: int = 0


def non_negative(value: Any, what: str) -> int:
    """`value` if it is a non-negative integer (not a bool); the error names `what`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SharedMemoryError(f"{what} must be a non-negative integer, got {value!r}")
    return value


class SharedMemoryRegistry:
    """The registered regions, by name; thread-safe (requests read while clients register)."""

    def __init__(self, folder: Path = SHM_DIR, max_regions: int = 256) -> None:
        self.folder, self.max_regions = folder, max_regions
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: Any, offset: Any, byte_size: Any) -> None:
        if not isinstance(name, str) or not name or len(name) > 255:
            raise SharedMemoryError("a region needs a name of 1-255 characters")
        if not isinstance(key, str) or not KEY.match(key):
            raise SharedMemoryError(f"key {key!r} is not a shared-memory object name (one path component, letters, digits, '_', '.', '-')")
        offset, byte_size = non_negative(offset, "offset"), non_negative(byte_size, "byte_size")
        if byte_size == 0:
            raise SharedMemoryError("byte_size must be positive")
        fd, inode = self._open(key, offset + byte_size)
        with self._lock:
            if name in self._regions:
                os.close(fd)
                raise SharedMemoryError(f"a region named {name!r} is already registered; unregister it first")
            if len(self._regions) >= self.max_regions:
                os.close(fd)
                raise SharedMemoryError(f"{self.max_regions} regions are registered already; unregister some first")
            self._regions[name] = Region(name, key, offset, byte_size, fd, inode)

    def _open(self, key: str, needed: int) -> tuple[int, tuple[int, int]]:
        path = self.folder / key.lstrip("/")
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            why = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
            raise SharedMemoryError(f"cannot open shared-memory object {key!r}: {why}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise SharedMemoryError(f"shared-memory object {key!r} is not a regular memory object")
        if info.st_size < needed:
            os.close(fd)
            raise SharedMemoryError(f"shared-memory object {key!r} holds {info.st_size} bytes; the region needs {needed}")
        return fd, (info.st_dev, info.st_ino)

    def unregister(self, name: str | None = None) -> None:
        """One region, or every one (name None or empty); unknown names are no error, as in Triton."""
        with self._lock:
            names = list(self._regions) if not name else [name] if name in self._regions else []
            for n in names:
                os.close(self._regions.pop(n).fd)

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            if not name:
                return [r.status() for r in self._regions.values()]
            if name not in self._regions:
                raise UnknownRegion(f"no shared-memory region named {name!r} is registered")
            return [self._regions[name].status()]

    def __len__(self) -> int:
        return len(self._regions)

    def _checked(self, ref: RegionRef, what: str) -> Region:
        """The region, with the request's slice inside it and the object still whole."""
        region = self._regions.get(ref.region)
        if region is None:
            raise SharedMemoryError(f"{what}: no shared-memory region named {ref.region!r} is registered")
        if ref.offset + ref.byte_size > region.byte_size:
            raise SharedMemoryError(f"{what}: {ref.byte_size} bytes at offset {ref.offset} run past region {ref.region!r} ({region.byte_size} bytes)")
        try:
            current = os.stat(self.folder / region.key.lstrip("/"), follow_symlinks=False)
        except FileNotFoundError:
            raise SharedMemoryError(f"{what}: shared-memory object {region.key!r} of region {ref.region!r} no longer exists") from None
        if (current.st_dev, current.st_ino) != region.inode:
            raise SharedMemoryError(f"{what}: shared-memory object {region.key!r} was replaced since region {ref.region!r} was registered")
        if current.st_size < region.offset + region.byte_size:
            raise SharedMemoryError(f"{what}: shared-memory object {region.key!r} shrank to {current.st_size} bytes")
        return region

    def read(self, ref: RegionRef, dtype: np.dtype[Any], shape: list[int], what: str) -> np.ndarray:
        """The tensor, copied out once (the client may refill the region at once)."""
        with self._lock:
            region = self._checked(ref, what)
            array = np.empty(shape, dtype=dtype)
            if array.nbytes != ref.byte_size:
                raise SharedMemoryError(f"{what}: shared_memory_byte_size {ref.byte_size} but shape {shape} of {dtype} takes {array.nbytes} bytes")
            got = os.preadv(region.fd, [array.data.cast("B")], region.offset + ref.offset) if array.nbytes else 0
        if got != array.nbytes:  # shrank between the check and the copy
            raise SharedMemoryError(f"{what}: region {ref.region!r} ended after {got} of {array.nbytes} bytes")
        return array

    def write(self, ref: RegionRef, array: np.ndarray, what: str) -> None:
        data = np.ascontiguousarray(array)
        if data.nbytes > ref.byte_size:
            raise SharedMemoryError(f"{what}: needs {data.nbytes} bytes; shared_memory_byte_size gives {ref.byte_size}")
        with self._lock:
            region = self._checked(ref, what)
            os.pwrite(region.fd, data.data.cast("B"), region.offset + ref.offset)

    def close(self) -> None:
        self.unregister()
