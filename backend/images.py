"""Image classification data (no download at run time) and elastic distortion (Simard et al.; docs/theory.md §5).

Datasets:
- ``digits``: scikit-learn's bundled 8×8 digits (1 797 images, 10 classes) — runs anywhere;
- ``fashion_mnist``: Debian's ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist/, gzipped IDX);
- ``idx``: MNIST or any dataset in the standard IDX format (gzipped or raw) in a directory the user gives.
Images are mapped to [−1, 1] as the paper does. The train/validation split is fixed: the IDX test files when present,
otherwise the last 20 % of a permutation drawn with seed 0.
"""

from __future__ import annotations

import functools
import gzip
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from backend.allowed import data_path
from backend.errors import ConfigError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class ImageData:
    x_train: np.ndarray  # (n, h, w) float32 in [−1, 1]
    y_train: np.ndarray  # (n,) int64
    x_val: np.ndarray
    y_val: np.ndarray
    name: str

    @property
    def shape(self) -> tuple[int, int]:
        return self.x_train.shape[1], self.x_train.shape[2]

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_val.max())) + 1


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzipped when the name ends in .gz); malformed files raise ConfigError naming the file."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as e:
        raise ConfigError("dataset", f"cannot read {path.name}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        raise ConfigError("dataset", f"{path.name} is not an IDX file (bad magic number)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ConfigError("dataset", f"{path.name} is truncated (header)")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    dtype = np.dtype(IDX_TYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = data[4 + 4 * ndim:]
    if len(body) != expected:
        raise ConfigError("dataset", f"{path.name} holds {len(body)} bytes of data, its header announces {expected}")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).exists():
            return directory / name
    return None


def _split(x: np.ndarray, y: np.ndarray, frac: float = 0.2):
    perm = np.random.default_rng(0).permutation(len(x))
    n_val = max(1, int(round(frac * len(x))))
    return x[perm[n_val:]], y[perm[n_val:]], x[perm[:n_val]], y[perm[:n_val]]


def _to_unit(images: np.ndarray, top: float) -> np.ndarray:
    return (images.astype(np.float32) / (top / 2.0) - 1.0).astype(np.float32)


def load_idx_dir(directory: str | Path, name: str = "idx") -> ImageData:
    d = Path(directory)
    if not d.is_dir():
        raise ConfigError("dataset.path", f"{d} is not a directory")
    tr_x, tr_y = _find(d, "train-images-idx3-ubyte"), _find(d, "train-labels-idx1-ubyte")
    if tr_x is None or tr_y is None:
        raise ConfigError("dataset.path", f"{d} lacks train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]")
    x, y = read_idx(tr_x), read_idx(tr_y)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise ConfigError("dataset", f"{tr_x.name} and {tr_y.name} do not match (images {x.shape}, labels {y.shape})")
    te_x, te_y = _find(d, "t10k-images-idx3-ubyte"), _find(d, "t10k-labels-idx1-ubyte")
    top = 255.0 if x.dtype == np.uint8 else float(np.abs(x).max() or 1.0)
    if te_x is not None and te_y is not None:
        xv, yv = read_idx(te_x), read_idx(te_y)
        if xv.ndim != 3 or xv.shape[1:] != x.shape[1:] or len(xv) != len(yv):
            raise ConfigError("dataset", f"{te_x.name} does not match the training images")
        xt, yt = x, y
    else:
        xt, yt, xv, yv = _split(x, y)
    return ImageData(_to_unit(xt, top), yt.astype(np.int64), _to_unit(xv, top), yv.astype(np.int64), name)


def load_digits() -> ImageData:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = d.images.astype(np.float32)  # values 0..16
    xt, yt, xv, yv = _split(x, d.target.astype(np.int64))
    return ImageData(_to_unit(xt, 16.0), yt, _to_unit(xv, 16.0), yv, "digits")


def _stamp(directory: Path) -> tuple:
    """What identifies a directory's files for the parse cache: names, sizes and modification times."""
    return tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in directory.iterdir() if f.is_file()))


@functools.lru_cache(maxsize=4)
def _parsed(name: str, directory: str, stamp: tuple) -> ImageData:
    """Parse once per process (the pages estimate a run's cost at every rerun); keyed by the files' stamp, so a
    changed file is read again."""
    if name == "digits":
        return load_digits()
    return load_idx_dir(directory, name)


def _fresh(data: ImageData) -> ImageData:
    """A copy of the cached arrays, so that no caller can change what the next one gets."""
    return ImageData(data.x_train.copy(), data.y_train.copy(), data.x_val.copy(), data.y_val.copy(), data.name)


def load_dataset(spec: dict) -> ImageData:
    name = spec.get("name")
    if name == "digits":
        data = _fresh(_parsed("digits", "", ()))
    elif name == "fashion_mnist":
        if not FASHION_DIR.is_dir():
            raise ConfigError("dataset", "Fashion-MNIST is not installed: `apt-get install dataset-fashion-mnist` puts "
                                         f"it in {FASHION_DIR}")
        data = _fresh(_parsed("fashion_mnist", str(FASHION_DIR), _stamp(FASHION_DIR)))
    elif name == "idx":
        d = data_path(spec.get("path", ""), "dataset.path")  # confined again where it is read (backend/allowed.py)
        if not d.is_dir():
            raise ConfigError("dataset.path", f"{d} is not a directory")
        data = _fresh(_parsed("idx", str(d.resolve()), _stamp(d)))
    else:
        raise ConfigError("dataset.name", f"expected 'digits', 'fashion_mnist' or 'idx', got {name!r}")
    for split, y in (("training", data.y_train), ("validation", data.y_val)):
        if len(np.unique(y)) < 2:
            raise ConfigError("dataset", f"the {split} labels hold a single class")
    n = spec.get("train_size")
    if n is not None and n < len(data.x_train):
        data = ImageData(data.x_train[:n], data.y_train[:n], data.x_val, data.y_val, data.name)
    m = spec.get("val_size")
    if m is not None and m < len(data.x_val):
        data = ImageData(data.x_train, data.y_train, data.x_val[:m], data.y_val[:m], data.name)
    return data


@dataclass(frozen=True)
class DataShape:
    """The sizes a run's cost depends on: training and validation images, image height and width, classes."""

    n_train: int
    n_val: int
    height: int
    width: int
    n_classes: int


# Fashion-MNIST's published sizes (Xiao, Rasul and Vollgraf, 2017: the train and t10k files), so that a run's config
# and its estimate stand where the Debian package is not installed
FASHION_MNIST_SHAPE = DataShape(60_000, 10_000, 28, 28, 10)


def missing_data(spec: dict) -> str | None:
    """Why the dataset ``spec`` cannot be read on this machine (a package that is not installed), or None."""
    if spec.get("name") == "fashion_mnist" and not FASHION_DIR.is_dir():
        return (f"Fashion-MNIST is not installed: `apt-get install dataset-fashion-mnist` puts it in {FASHION_DIR}. "
                "The estimate above is for its published sizes (60 000 training and 10 000 test images, 28 × 28).")
    return None


def data_shape(spec: dict) -> DataShape:
    """The sizes of the dataset ``spec`` (subsets applied): read from the data, or Fashion-MNIST's published sizes
    where the package is not installed (``missing_data`` says so)."""
    if missing_data(spec) is None:
        data = load_dataset(spec)
        return DataShape(len(data.x_train), len(data.x_val), *data.shape, data.n_classes)
    full = FASHION_MNIST_SHAPE
    return DataShape(min(spec.get("train_size") or full.n_train, full.n_train),
                     min(spec.get("val_size") or full.n_val, full.n_val), full.height, full.width, full.n_classes)


# -- elastic distortion -----------------------------------------------------------------------------------------

def gaussian_kernel(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of width σ, truncated at 4σ."""
    radius = max(1, int(math.ceil(4 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def displacement_fields(n: int, h: int, w: int, alpha: float, sigma: float, generator: torch.Generator
                        ) -> torch.Tensor:
    """(n, 2, h, w): U(−1, 1) per pixel for x and y, smoothed by a Gaussian of width σ (separable, reflect padding at
    the borders), scaled by α — Simard et al.'s elastic displacement, in pixels."""
    u = torch.rand((n, 2, h, w), generator=generator, dtype=torch.float64) * 2 - 1
    if sigma > 0:
        k = gaussian_kernel(sigma)
        r = (len(k) - 1) // 2
        flat = u.reshape(n * 2, 1, h, w)
        flat = torch.nn.functional.pad(flat, (r, r, 0, 0), mode="reflect" if r < w else "replicate")
        flat = torch.nn.functional.conv2d(flat, k.view(1, 1, 1, -1))
        flat = torch.nn.functional.pad(flat, (0, 0, r, r), mode="reflect" if r < h else "replicate")
        flat = torch.nn.functional.conv2d(flat, k.view(1, 1, -1, 1))
        u = flat.reshape(n, 2, h, w)
    return alpha * u


def elastic_distort(images: np.ndarray, alpha: float, sigma: float, seed: int) -> np.ndarray:
    """Distort images in [−1, 1] (n, h, w) by seeded elastic displacement fields, bilinear resampling; outside the
    image counts as background (−1). α = 0 is the identity."""
    x = torch.as_tensor(images, dtype=torch.float64)
    n, h, w = x.shape
    gen = torch.Generator().manual_seed(seed)
    disp = displacement_fields(n, h, w, alpha, sigma, gen)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    src_x = xs + disp[:, 0]
    src_y = ys + disp[:, 1]
    grid = torch.stack([2 * src_x / max(w - 1, 1) - 1, 2 * src_y / max(h - 1, 1) - 1], dim=-1)
    out = torch.nn.functional.grid_sample((x + 1)[:, None], grid, mode="bilinear", padding_mode="zeros",
                                          align_corners=True)[:, 0] - 1
    return out.to(torch.float32).numpy()
