"""Data: 2-D toys (geometry with zero noise, determinism), sklearn digits, and the MNIST IDX
parser and loader on small IDX files written here (no network; the download path is exercised
through a file:// mirror)."""
import gzip
import math
import struct

import numpy as np
import pytest
import torch

import diffusion_lab as dl


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_two_moons_geometry_and_determinism():
    x = dl.two_moons(2000, noise=0.0, generator=_gen(0))
    assert x.shape == (2000, 2) and x.dtype == torch.float32
    # Undo the centring/scaling: every point is on the upper unit half circle centred at (0, 0)
    # or on the lower one centred at (1, 0.5).
    p = x.double() * 0.7 + torch.tensor([0.5, 0.25], dtype=torch.float64)
    d_upper = (p.norm(dim=1) - 1).abs() + torch.relu(-p[:, 1])
    d_lower = ((p - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1) - 1).abs() + torch.relu(p[:, 1] - 0.5)
    assert float(torch.minimum(d_upper, d_lower).max()) < 1e-5
    frac_upper = float((d_upper < 1e-5).double().mean())
    assert abs(frac_upper - 0.5) < 5 * math.sqrt(0.25 / 2000)  # each moon with probability 1/2, 5 SE
    assert torch.equal(dl.two_moons(100, generator=_gen(1)), dl.two_moons(100, generator=_gen(1)))
    assert not torch.equal(dl.two_moons(100, generator=_gen(1)), dl.two_moons(100, generator=_gen(2)))


def test_swiss_roll_geometry():
    x = dl.swiss_roll(1000, noise=0.0, generator=_gen(3)).double() * 8
    r = x.norm(dim=1)                                  # = u, in [1.5 pi, 4.5 pi]
    assert float(r.min()) >= 1.5 * math.pi - 1e-4 and float(r.max()) <= 4.5 * math.pi + 1e-4
    torch.testing.assert_close(torch.stack([r * torch.cos(r), r * torch.sin(r)], 1), x, rtol=1e-4, atol=1e-4)


def test_make_toy_and_labelled_mixture():
    for name in ("moons", "swiss_roll", "ring"):
        x, y = dl.make_toy(name, 50, _gen(4))
        assert x.shape == (50, 2) and y is None and bool(torch.isfinite(x).all())
    x, y = dl.make_toy("mixture", 300, _gen(5))
    assert x.shape == (300, 2) and y.shape == (300,) and set(y.tolist()) == {0, 1, 2}
    assert dl.labelled_mixture().num_classes == 3


def test_toy_bad_input():
    with pytest.raises(ValueError, match="name"):
        dl.make_toy("spiral", 10)
    with pytest.raises(ValueError, match="n"):
        dl.two_moons(0)
    with pytest.raises(ValueError, match="noise"):
        dl.two_moons(10, noise=-0.1)
    with pytest.raises(TypeError, match="n"):
        dl.swiss_roll(10.5)


def test_load_digits():
    x, y = dl.load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.long and set(y.tolist()) == set(range(10))
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    xf, _ = dl.load_digits(flatten=True)
    assert xf.shape == (1797, 64)
    torch.testing.assert_close(xf, x.reshape(1797, 64))


# ---------------------------------------------------------------------------------------
# IDX / MNIST
# ---------------------------------------------------------------------------------------
def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    # magic: two zero bytes, the dtype code, the number of dims; then big-endian uint32 sizes.
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def test_read_idx_uint8_float_and_gzip(tmp_path):
    imgs = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.idx").write_bytes(_idx_bytes(imgs, 0x08))
    np.testing.assert_array_equal(dl.read_idx(tmp_path / "a.idx"), imgs)
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(_idx_bytes(imgs, 0x08)))
    np.testing.assert_array_equal(dl.read_idx(tmp_path / "a.idx.gz"), imgs)
    f = np.array([[1.5, -2.25], [3.0, 1e-3]], dtype=np.float32)
    (tmp_path / "f.idx").write_bytes(_idx_bytes(f, 0x0D))
    out = dl.read_idx(tmp_path / "f.idx")
    np.testing.assert_array_equal(out, f)
    i32 = np.array([1, -70000, 123456789], dtype=np.int32)
    (tmp_path / "i.idx").write_bytes(_idx_bytes(i32, 0x0C))
    np.testing.assert_array_equal(dl.read_idx(tmp_path / "i.idx"), i32)


def test_read_idx_rejects_bad_files(tmp_path):
    good = _idx_bytes(np.zeros((2, 2), dtype=np.uint8), 0x08)
    (tmp_path / "magic").write_bytes(b"\x01" + good[1:])
    with pytest.raises(ValueError, match="IDX"):
        dl.read_idx(tmp_path / "magic")
    (tmp_path / "dtype").write_bytes(good[:2] + b"\x42" + good[3:])
    with pytest.raises(ValueError, match="IDX"):
        dl.read_idx(tmp_path / "dtype")
    (tmp_path / "short").write_bytes(good[:-1])
    with pytest.raises(ValueError, match="bytes"):
        dl.read_idx(tmp_path / "short")
    (tmp_path / "header").write_bytes(good[:6])
    with pytest.raises(ValueError, match="truncated"):
        dl.read_idx(tmp_path / "header")


def _write_fake_mnist(root, n=5, prefix="train", gz=True, n_labels=None):
    root.mkdir(parents=True, exist_ok=True)
    imgs = np.zeros((n, 28, 28), dtype=np.uint8)
    imgs[:, 0, 0] = 255
    imgs[:, 1, 1] = np.arange(n)
    labels = (np.arange(n if n_labels is None else n_labels) % 10).astype(np.uint8)
    for name, arr, code in ((f"{prefix}-images-idx3-ubyte.gz", imgs, 0x08), (f"{prefix}-labels-idx1-ubyte.gz", labels, 0x08)):
        raw = _idx_bytes(arr, code)
        (root / name).write_bytes(gzip.compress(raw) if gz else raw)
    return imgs, labels


def test_load_mnist_from_local_idx_files(tmp_path):
    imgs, labels = _write_fake_mnist(tmp_path / "mnist", n=5)
    x, y = dl.load_mnist(tmp_path / "mnist", verify=False)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32
    assert float(x[0, 0, 0, 0]) == pytest.approx(1.0) and float(x[0, 0, 5, 5]) == pytest.approx(-1.0)
    torch.testing.assert_close(x[:, 0], torch.tensor(imgs, dtype=torch.float32) / 127.5 - 1)
    assert torch.equal(y, torch.tensor(labels, dtype=torch.long))
    _write_fake_mnist(tmp_path / "mnist", n=3, prefix="t10k", gz=False)
    x, _ = dl.load_mnist(tmp_path / "mnist", split="test", verify=False)
    assert x.shape == (3, 1, 28, 28)


def test_load_mnist_checks(tmp_path):
    _write_fake_mnist(tmp_path / "m", n=5)
    with pytest.raises(ValueError, match="SHA-256"):
        dl.load_mnist(tmp_path / "m")                      # verify=True: these are not the real files
    with pytest.raises(ValueError, match="split"):
        dl.load_mnist(tmp_path / "m", split="val", verify=False)
    with pytest.raises(FileNotFoundError, match="download"):
        dl.load_mnist(tmp_path / "empty")
    _write_fake_mnist(tmp_path / "bad", n=5, n_labels=4)
    with pytest.raises(ValueError, match="labels"):
        dl.load_mnist(tmp_path / "bad", verify=False)


def test_load_mnist_download_rejects_a_checksum_mismatch(tmp_path):
    # A file:// mirror holding fake files: the download must be refused and nothing saved.
    _write_fake_mnist(tmp_path / "mirror", n=2)
    root = tmp_path / "cache"
    with pytest.raises(ValueError, match="SHA-256"):
        dl.load_mnist(root, download=True, mirror=(tmp_path / "mirror").as_uri() + "/")
    assert not list(root.glob("*")), list(root.glob("*"))
