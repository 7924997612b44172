"""Data: 2-D toy sets made from a generator, scikit-learn's bundled handwritten digits,
and an MNIST loader for the standard IDX files (downloaded only when asked, SHA-256 checked)."""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from ._checks import check_int, check_number, randn
from .mixtures import GaussianMixture, ring_mixture

TOYS = ("moons", "swiss_roll", "ring", "mixture", "checkerboard", "thin_ring")


def two_moons(n: int, noise: float = 0.05, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Two interleaved half circles, centred and scaled to about unit spread.

    Parameters
    ----------
    n : int
        Number of points.
    noise : float, optional
        Standard deviation of the Gaussian noise added, :math:`\ge 0` (default 0.05).
    generator : torch.Generator, optional
        Source of the draws.

    Returns
    -------
    torch.Tensor
        float32, shape ``(n, 2)``.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If ``n`` is not a positive integer or a number is out of its range.
    """
    n = check_int("n", n, low=1)
    noise = check_number("noise", noise, low=0)
    u = torch.rand(n, generator=generator) * math.pi
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, torch.cos(u), 1 - torch.cos(u))
    y = torch.where(upper, torch.sin(u), 0.5 - torch.sin(u))
    pts = torch.stack([x - 0.5, y - 0.25], 1) / 0.7
    return (pts + noise / 0.7 * randn((n, 2), generator, device="cpu")).float()


def swiss_roll(n: int, noise: float = 0.03, generator: torch.Generator | None = None) -> torch.Tensor:
    """A 2-D spiral (the swiss roll seen from the side), scaled to about unit spread.

    Parameters
    ----------
    n : int
        Number of points.
    noise : float, optional
        Standard deviation of the Gaussian noise added (default 0.03).
    generator : torch.Generator, optional
        Source of the draws.

    Returns
    -------
    torch.Tensor
        float32, shape ``(n, 2)``.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If ``n`` is not a positive integer or a number is out of its range.
    """
    n = check_int("n", n, low=1)
    noise = check_number("noise", noise, low=0)
    u = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    pts = torch.stack([u * torch.cos(u), u * torch.sin(u)], 1) / 8.0
    return (pts + noise * randn((n, 2), generator, device="cpu")).float()


def checkerboard(n: int, cells: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Uniform on the dark squares of a ``cells`` x ``cells`` board on :math:`[-2, 2]^2` (no noise).

    A density with sharp edges and corners.

    Parameters
    ----------
    n : int
        Number of points.
    cells : int, optional
        Squares per side, :math:`\ge 2` (default 4).
    generator : torch.Generator, optional
        Source of the draws.

    Returns
    -------
    torch.Tensor
        float32, shape ``(n, 2)``.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If ``n`` is not a positive integer or a number is out of its range.
    """
    n = check_int("n", n, low=1)
    cells = check_int("cells", cells, low=2)
    cx = torch.randint(0, cells, (n,), generator=generator)
    cy = 2 * torch.randint(0, (cells + 1) // 2, (n,), generator=generator) + cx % 2   # same parity as cx
    cy = torch.where(cy >= cells, cy - 2, cy)
    u = torch.rand(n, 2, generator=generator)
    return ((torch.stack([cx, cy], 1) + u) * (4.0 / cells) - 2.0).float()


def thin_ring(n: int, radius: float = 1.5, width: float = 0.02, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""A circle of ``radius`` blurred by Gaussian noise of standard deviation ``width``: a thin structure.

    Parameters
    ----------
    n : int
        Number of points.
    radius : float, optional
        Radius, :math:`> 0` (default 1.5).
    width : float, optional
        Noise standard deviation, :math:`\ge 0` (default 0.02).
    generator : torch.Generator, optional
        Source of the draws.

    Returns
    -------
    torch.Tensor
        float32, shape ``(n, 2)``.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If ``n`` is not a positive integer or a number is out of its range.
    """
    n = check_int("n", n, low=1)
    radius = check_number("radius", radius, low=0, low_open=True)
    width = check_number("width", width, low=0)
    ang = 2 * math.pi * torch.rand(n, generator=generator)
    pts = radius * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    return (pts + width * randn((n, 2), generator, device="cpu")).float()


def labelled_mixture() -> GaussianMixture:
    """Three overlapping labelled Gaussian classes in 2-D (chapter 10's toy).

    Returns
    -------
    GaussianMixture
        With labels 0, 1, 2: its exact class-conditional scores are the guidance oracle.
    """
    means = [[-1.0, -0.6], [1.0, -0.6], [0.0, 1.1]]
    return GaussianMixture(means, stds=0.45, labels=[0, 1, 2])


def make_toy(name: str, n: int, generator: torch.Generator | None = None):
    """A named 2-D toy data set with its labels.

    Parameters
    ----------
    name : {"moons", "swiss_roll", "ring", "mixture", "checkerboard", "thin_ring"}
        Which set (``"ring"``: :func:`ring_mixture`, ``"mixture"``: :func:`labelled_mixture`).
    n : int
        Number of points.
    generator : torch.Generator, optional
        Source of the draws.

    Returns
    -------
    x : torch.Tensor
        Shape ``(n, 2)``.
    labels : torch.Tensor or None
        Integer labels ``(n,)``, or ``None`` for the unlabelled sets.

    Raises
    ------
    ValueError
        If ``name`` is unknown.
    """
    if name == "moons":
        return two_moons(n, generator=generator), None
    if name == "swiss_roll":
        return swiss_roll(n, generator=generator), None
    if name == "ring":
        return ring_mixture().sample(n, generator)[0], None
    if name == "mixture":
        return labelled_mixture().sample_labelled(n, generator)
    if name == "checkerboard":
        return checkerboard(n, generator=generator), None
    if name == "thin_ring":
        return thin_ring(n, generator=generator), None
    raise ValueError(f"name must be one of {TOYS}, got {name!r}")


def load_digits(flatten: bool = False):
    """scikit-learn's bundled 8x8 handwritten digits, scaled from :math:`[0, 16]` to :math:`[-1, 1]`.

    Parameters
    ----------
    flatten : bool, optional
        Return vectors ``(1797, 64)`` instead of images ``(1797, 1, 8, 8)`` (default ``False``).

    Returns
    -------
    x : torch.Tensor
        float32, shape ``(1797, 1, 8, 8)`` or ``(1797, 64)``.
    y : torch.Tensor
        Integer labels 0-9, shape ``(1797,)``.
    """
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    x = torch.tensor(d.images, dtype=torch.float32) / 8.0 - 1.0
    x = x.reshape(-1, 64) if flatten else x[:, None]
    return x, torch.tensor(d.target, dtype=torch.long)


def load_digit_tokens():
    """The sklearn digits as tokens: each pixel's grey level an integer category in 0..16.

    17 categories, for discrete diffusion (`masked.py`). Images for the judge:
    ``x.reshape(-1, 1, 8, 8) / 8 - 1`` (the [-1, 1] scale of `load_digits`).

    Returns
    -------
    x : torch.Tensor
        long, shape ``(1797, 64)``, values in 0..16.
    y : torch.Tensor
        Integer labels 0-9 (long), shape ``(1797,)``.
    """
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    return torch.tensor(d.images, dtype=torch.long).reshape(-1, 64), torch.tensor(d.target, dtype=torch.long)


# ---- MNIST ----------------------------------------------------------------------------
MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_SHA256 = {  # the published SHA-256 of the original compressed files
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path) -> np.ndarray:
    """Parse an IDX file (MNIST's format), optionally gzip-compressed.

    The format: a magic ``0x0000``, a dtype byte, an ``ndim`` byte, then ``ndim`` big-endian uint32 sizes,
    then the data.

    Parameters
    ----------
    path : str or pathlib.Path
        The file.

    Returns
    -------
    numpy.ndarray
        The array, of the header's shape and dtype.

    Raises
    ------
    ValueError
        If the magic number is wrong, or the file is truncated or longer than its header says.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path} is truncated: header needs {4 + 4 * ndim} bytes, file has {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) != expected:
        raise ValueError(f"{path} has {len(body)} data bytes, but its header {dims} needs {expected}")
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(name: str, dest: Path, mirror: str) -> None:
    """Fetch one file to a temporary name, check its SHA-256, then move it into place atomically."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(mirror + name, timeout=60) as resp:
            out.write(resp.read())
        digest = sha256_file(tmp)
        if digest != MNIST_SHA256[name]:
            raise ValueError(f"{name}: SHA-256 {digest} does not match the published {MNIST_SHA256[name]}; not saved")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_mnist(root="~/.cache/diffusion_lab/mnist", split: str = "train", download: bool = False,
               mirror: str = MNIST_MIRROR, verify: bool = True):
    """MNIST, from the four standard IDX files in ``root``.

    Nothing is downloaded unless ``download=True``; downloaded (and, with ``verify=True``, existing) files
    must match the published SHA-256.

    Parameters
    ----------
    root : str or pathlib.Path, optional
        Folder of the files (default ``~/.cache/diffusion_lab/mnist``).
    split : {"train", "test"}, optional
        Which half (default ``"train"``).
    download : bool, optional
        Download missing files from ``mirror`` (default ``False``).
    mirror : str, optional
        The download URL prefix.
    verify : bool, optional
        Check the SHA-256 of the files (default ``True``).

    Returns
    -------
    x : torch.Tensor
        Images in :math:`[-1, 1]`, shape ``(N, 1, 28, 28)``.
    y : torch.Tensor
        Integer labels, shape ``(N,)``.

    Raises
    ------
    FileNotFoundError
        If a file is missing and ``download`` is ``False``.
    ValueError
        If ``split`` is unknown, a file's SHA-256 does not match, or images and labels disagree.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(os.path.expanduser(str(root)))
    prefix = "train" if split == "train" else "t10k"
    names = [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
    arrays = []
    for name in names:
        path = root / name
        if not path.exists():
            if not download:
                raise FileNotFoundError(f"{path} not found; put the MNIST files in {root} or call load_mnist(download=True)")
            root.mkdir(parents=True, exist_ok=True)
            _download(name, path, mirror)
        elif verify and sha256_file(path) != MNIST_SHA256[name]:
            raise ValueError(f"{path}: SHA-256 does not match the published MNIST file; delete it or pass verify=False")
        arrays.append(read_idx(path))
    images, labels = arrays
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"MNIST files disagree: images {images.shape}, labels {labels.shape}")
    x = torch.tensor(images, dtype=torch.float32)[:, None] / 127.5 - 1.0
    return x, torch.tensor(labels, dtype=torch.long)
