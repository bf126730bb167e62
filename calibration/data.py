"""Dataset loaders that return plain numpy arrays.

No torch here: the same loaders feed training on a workstation and calibration on
the device, where torch may be absent.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.errors import DatasetNotFoundError, InputError, UserError

if TYPE_CHECKING:
    import PIL.Image

DEFAULT_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})

# IDX dtype codes; multi-byte types are big-endian on disk.
_IDX_DTYPES: dict[int, np.dtype[Any]] = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
# On-disk prefixes per split: "t10k" is the MNIST name, "test" is common in re-packs.
_IDX_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}
_GRAY_MODES = frozenset({"1", "L", "LA"})


class DatasetMismatchError(UserError):
    """A split does not fit the model or the other split (another class list)."""


@dataclass(frozen=True)
class Dataset:
    images: np.ndarray  # float32, shape (N, C, H, W), values in [0, 1]
    labels: np.ndarray  # int64, shape (N,)
    classes: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        # Catch shape mistakes here rather than deep inside a training loop.
        if self.images.ndim != 4 or self.labels.ndim != 1 or len(self.images) != len(self.labels):
            raise InputError(f"dataset {self.name}: images {self.images.shape} and labels "
                             f"{self.labels.shape} must be (N, C, H, W) and (N,)")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray | slice) -> Dataset:
        return Dataset(self.images[indices], self.labels[indices], self.classes, self.name)

    def split(self, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Random split; the second part holds `fraction` of the items (e.g. a calibration set)."""
        if not 0.0 <= fraction <= 1.0:
            raise InputError(f"split fraction must be in [0, 1], got {fraction}")
        order = np.random.default_rng(seed).permutation(len(self))
        n_first = round(len(self) * (1.0 - fraction))
        # Sorted indices keep each part in the original dataset order.
        return self.subset(np.sort(order[:n_first])), self.subset(np.sort(order[n_first:]))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)


def read_idx(path: Path | str) -> np.ndarray:
    """Parse an IDX file, gzip-compressed or plain, into a native-endian array."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: no such IDX file")
    return _parse_idx(_read_maybe_gzip(path), path)


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    # Sniff the gzip magic instead of trusting the suffix; plain IDX starts with 0x00.
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: not an IDX file (corrupt gzip: {exc})") from exc


def _parse_idx(data: bytes, path: Path) -> np.ndarray:
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise InputError(f"{path}: not an IDX file (bad magic {data[:4].hex() or 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InputError(f"{path}: not an IDX file (header truncated)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[data[2]]
    count = math.prod(dims)
    if len(data) - header != count * dtype.itemsize:
        raise InputError(f"{path}: not an IDX file (dims {dims} need {count * dtype.itemsize} "
                         f"data bytes, found {len(data) - header})")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    native: np.ndarray = array.astype(dtype.newbyteorder("="))
    return native  # copy: writable and native byte order


def _find_idx_file(root: Path, split: str, kind: str) -> Path | None:
    """kind is "images-idx3" or "labels-idx1"; also accept MNIST's dotted "images.idx3"."""
    for prefix in _IDX_PREFIXES[split]:
        for sep in ("-", "."):
            for suffix in ("", ".gz"):
                candidate = root / f"{prefix}-{kind.replace('-', sep)}-ubyte{suffix}"
                if candidate.is_file():
                    return candidate
    return None


def _idx_not_found(root: Path, name: str) -> DatasetNotFoundError:
    how = "pass a folder holding train/t10k-images-idx3-ubyte[.gz] and ...-labels-idx1-ubyte[.gz]"
    if name == "fashion-mnist":
        return DatasetNotFoundError(f"Fashion-MNIST not found in {root}: install it with "
                                    f"`apt-get install dataset-fashion-mnist`, or {how}")
    return DatasetNotFoundError(f"{name} not found in {root}: {how}")


def _to_unit_float(pixels: np.ndarray) -> np.ndarray:
    # Integer pixels are 0..255 bytes; float IDX data is taken as already scaled.
    if np.issubdtype(pixels.dtype, np.integer):
        return pixels.astype(np.float32) / np.float32(255.0)
    return pixels.astype(np.float32)


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test', got {split!r}")


def load_idx_folder(root: Path | str | None = None, split: str = "train",
                    name: str = "fashion-mnist",
                    classes: tuple[str, ...] | None = None) -> Dataset:
    _check_split(split)
    root = DEFAULT_FASHION_MNIST if root is None else Path(root).expanduser()
    images_path = _find_idx_file(root, split, "images-idx3") if root.is_dir() else None
    labels_path = _find_idx_file(root, split, "labels-idx1") if root.is_dir() else None
    if images_path is None or labels_path is None:
        raise _idx_not_found(root, name)
    pixels, labels = read_idx(images_path), read_idx(labels_path)
    if pixels.ndim != 3 or labels.ndim != 1:
        raise InputError(f"{root}: expected (N, H, W) images and (N,) labels, "
                         f"got {pixels.shape} and {labels.shape}")
    if len(pixels) != len(labels):
        raise InputError(f"{root}: {len(pixels)} images but {len(labels)} labels")
    labels = labels.astype(np.int64)
    classes = classes or _default_classes(labels, name)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise InputError(f"{labels_path}: labels must be in [0, {len(classes)})")
    return Dataset(_to_unit_float(pixels)[:, None], labels, tuple(classes), name)


def _default_classes(labels: np.ndarray, name: str) -> tuple[str, ...]:
    """One class per label value up to the largest seen; pass `classes` for sparse splits."""
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    # Fashion names only for Fashion-MNIST: an MNIST folder also has 10 classes.
    if n_classes == 10 and name == "fashion-mnist":
        return FASHION_MNIST_CLASSES
    return tuple(str(i) for i in range(n_classes))


def load_digits(split: str = "train", test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits: tiny, always available, good for smoke tests."""
    _check_split(split)
    from sklearn.datasets import load_digits as sk_load_digits  # lazy: heavy import

    bunch = sk_load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]
    full = Dataset(images, bunch.target.astype(np.int64),
                   tuple(str(i) for i in range(10)), "digits")
    train, test = full.split(test_fraction, seed)
    return train if split == "train" else test


def _image_folder_not_found(root: Path, why: str) -> DatasetNotFoundError:
    exts = "|".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
    return DatasetNotFoundError(f"{why} in {root}: expected {root}/<class_name>/<image>.{{{exts}}}, "
                                "one sub-folder per class")


def _list_images(root: Path) -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    samples = [(f, label) for label, d in enumerate(class_dirs) for f in sorted(d.iterdir())
               if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    return tuple(d.name for d in class_dirs), samples


def _probe_image(path: Path) -> tuple[str, tuple[int, int]]:
    """Mode and (H, W) from the header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.mode, (img.height, img.width)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: cannot decode image ({exc})") from exc


def _read_image(path: Path, mode: str, size: tuple[int, int], crop: bool = False) -> np.ndarray:
    """Decode one image to float32 (C, H, W) in [0, 1], converted and resized as asked."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            pixels = np.asarray(_fit(img.convert(mode), size, crop), dtype=np.float32) / np.float32(255.0)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: cannot decode image ({exc})") from exc
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _fit(img: PIL.Image.Image, size: tuple[int, int], crop: bool) -> PIL.Image.Image:
    """Resize to (H, W): stretched, or (crop) scaled to cover it and centre-cropped."""
    from PIL import Image

    if (img.height, img.width) == size:
        return img
    if not crop:
        return img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    scale = max(size[0] / img.height, size[1] / img.width)
    height, width = max(size[0], round(img.height * scale)), max(size[1], round(img.width * scale))
    img = img.resize((width, height), Image.Resampling.BILINEAR)
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    return img.crop((left, top, left + size[1], top + size[0]))


def fit_images(images: np.ndarray, shape: tuple[int, int, int], crop: bool = False) -> np.ndarray:
    """(N, C, H, W) images in [0, 1] at another size and channel count: grey to RGB
    repeats the channel, RGB to grey takes the luminance."""
    from PIL import Image

    channels, height, width = images.shape[1:]
    if shape[0] != channels and {shape[0], channels} != {1, 3}:
        raise InputError(f"cannot turn {channels}-channel images into {shape[0]} channels (only 1 <-> 3)")
    if shape[0] == 1 and channels == 3:
        images = np.tensordot(images, np.array([0.299, 0.587, 0.114], dtype=np.float32), axes=([1], [0]))[:, None]
    if (height, width) != tuple(shape[1:]):
        planes = [np.asarray(_fit(Image.fromarray(plane, mode="F"), shape[1:], crop)) for plane in images.reshape(-1, height, width)]
        images = np.stack(planes).reshape(len(images), -1, *shape[1:])
    if shape[0] == 3 and images.shape[1] == 1:
        images = np.repeat(images, 3, axis=1)
    return np.ascontiguousarray(np.clip(images, 0.0, 1.0), dtype=np.float32)


def load_image_folder(root: Path | str, size: tuple[int, int] | None = None,
                      grayscale: bool | None = None, crop: bool = False) -> Dataset:
    """torchvision-ImageFolder layout: root/<class_name>/<image>; classes sorted by name.
    Images are resized to `size` (H, W) (centre-cropped with `crop`), by default the
    first image's size."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise _image_folder_not_found(root, "no image folder")
    classes, samples = _list_images(root)
    if not samples:
        raise _image_folder_not_found(root, "no images")
    probes = [_probe_image(path) for path, _ in samples]
    if grayscale is None:
        grayscale = all(mode in _GRAY_MODES for mode, _ in probes)
    target = size if size is not None else probes[0][1]
    mode = "L" if grayscale else "RGB"
    images = np.stack([_read_image(path, mode, target, crop) for path, _ in samples])
    labels = np.array([label for _, label in samples], dtype=np.int64)
    return Dataset(images, labels, classes, root.name)


def _has_idx_files(root: Path) -> bool:
    return any("-idx" in p.name or ".idx" in p.name for p in root.iterdir() if p.is_file())


def _load_folder_split(root: Path, split: str, shape: tuple[int, int, int] | None, crop: bool) -> Dataset:
    # Image folders may hold root/train/<class>/ and root/test/<class>/.
    split_root = root / split
    size, grayscale = (None, None) if shape is None else (shape[1:], shape[0] == 1)
    return load_image_folder(split_root if split_root.is_dir() else root, size, grayscale, crop)


def _chw(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise InputError(f"an input shape is (C, H, W), got {tuple(shape)}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def load_dataset(spec: str, split: str = "train", input_shape: Sequence[int] | None = None,
                 classes: Sequence[str] | None = None, crop: bool = False) -> Dataset:
    """A dataset from a short spec string, as given on a command line, fitted to
    `input_shape` (C, H, W) if given (resized, centre-cropped with `crop`, channels
    converted); with `classes`, a split whose class list differs is refused."""
    shape = None if input_shape is None else _chw(input_shape)
    data = _load(spec, split, shape, crop)
    if shape is not None and data.input_shape != shape:
        data = Dataset(fit_images(data.images, shape, crop), data.labels, data.classes, data.name)
    if classes is not None:
        check_classes(data, classes)
    return data


def check_classes(data: Dataset, classes: Sequence[str], against: str = "the model") -> None:
    """A split must hold the very classes, in order, that the model was trained on."""
    if list(data.classes) != list(classes):
        missing = [c for c in classes if c not in data.classes]
        extra = [c for c in data.classes if c not in classes]
        detail = f"missing {missing}" * bool(missing) + ", " * bool(missing and extra) + f"not in it {extra}" * bool(extra)
        raise DatasetMismatchError(
            f"{data.name}: its classes differ from those of {against} ({len(data.classes)} vs {len(classes)}"
            + (f"; {detail}" if detail else "; same classes in another order") + ")"
        )


def _load(spec: str, split: str, shape: tuple[int, int, int] | None, crop: bool) -> Dataset:
    if spec == "fashion-mnist":
        return load_idx_folder(None, split)
    if spec == "digits":
        return load_digits(split)
    if spec.startswith("idx:"):
        root = Path(spec[4:]).expanduser()
        return load_idx_folder(root, split, name=root.name or "idx")
    if spec.startswith("folder:"):
        return _load_folder_split(Path(spec[7:]).expanduser(), split, shape, crop)
    path = Path(spec).expanduser()
    if path.is_dir():
        if _has_idx_files(path):
            return load_idx_folder(path, split, name=path.name or "idx")
        return _load_folder_split(path, split, shape, crop)
    raise DatasetNotFoundError(f"unknown dataset {spec!r}: use 'fashion-mnist', 'digits', "
                               "'idx:<folder>', 'folder:<folder>' or an existing folder")


def iterate_batches(dataset: Dataset, batch_size: int, shuffle: bool = False,
                    seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (images, labels) batches; the last one may be smaller."""
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    n = len(dataset)
    order = np.random.default_rng(seed).permutation(n) if shuffle else None
    for start in range(0, n, batch_size):
        # Slices are views (no copy) when the order is unchanged.
        index = order[start:start + batch_size] if order is not None else slice(start, start + batch_size)
        yield dataset.images[index], dataset.labels[index]
