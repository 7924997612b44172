"""Command line: train a tiny model, sample it to a PNG, conditional sampling with guidance, errors."""
import subprocess
import sys

import numpy as np
import pytest

import diffusion_lab as dl
from diffusion_lab.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def test_train_then_sample_writes_a_checkpoint_and_a_png(tmp_path, capsys):
    ckpt = tmp_path / "moons.pt"
    rc = main(["train", "--data", "moons", "--n", "500", "--steps", "20", "--batch-size", "64", "--width", "16",
               "--out", str(ckpt), "--no-progress"])
    assert rc == 0 and ckpt.exists()
    model, meta = dl.load_checkpoint(ckpt)
    assert meta["data"] == "moons" and meta["sample_shape"] == [2] and meta["num_classes"] is None
    assert "train" in meta["command"]
    png = tmp_path / "s.png"
    rc = main(["sample", "--ckpt", str(ckpt), "--n", "32", "--steps", "5", "--out", str(png), "--no-progress"])
    assert rc == 0 and png.read_bytes()[:8] == PNG
    _assert_is_a_scatter_plot(png)
    rc = main(["sample", "--ckpt", str(ckpt), "--n", "8", "--sampler", "ddpm", "--out", str(tmp_path / "d.png"),
               "--no-progress"])
    assert rc == 0 and (tmp_path / "d.png").read_bytes()[:8] == PNG
    assert "saved" in capsys.readouterr().out


def test_conditional_train_and_guided_sample(tmp_path):
    ckpt = tmp_path / "mix.pt"
    assert main(["train", "--data", "mixture", "--conditional", "--n", "300", "--steps", "10", "--batch-size", "64",
                 "--width", "16", "--out", str(ckpt), "--no-progress"]) == 0
    _, meta = dl.load_checkpoint(ckpt)
    assert meta["num_classes"] == 3
    png = tmp_path / "c.png"
    assert main(["sample", "--ckpt", str(ckpt), "--label", "1", "--guidance", "2.5", "--n", "16", "--steps", "4",
                 "--out", str(png), "--no-progress"]) == 0
    assert png.read_bytes()[:8] == PNG
    _assert_is_a_scatter_plot(png)


def _assert_is_a_scatter_plot(path):
    # Decode the PNG: a 4 x 4 inch figure at 100 dpi, cropped to its content ("tight"), so between
    # 200 and 400 pixels a side, with the scatter points drawn in matplotlib's first colour C0
    # (#1f77b4, alpha 0.5 over white, or darker where points overlap): an empty or blank figure fails.
    from PIL import Image
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    h, w, _ = img.shape
    assert 200 <= h <= 400 and 200 <= w <= 400, (h, w)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    bluish = (b - r > 40) & (b > 120)
    assert int(bluish.sum()) >= 20, int(bluish.sum())


def test_cli_errors(tmp_path, capsys):
    assert main(["sample", "--ckpt", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.png")]) == 2
    assert "error" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main(["sample", "--ckpt", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "x.png")]) == 2
    capsys.readouterr()
    # A checked refusal: status 2 like every other bad input, and a message on stderr that names the
    # flag and the data set.
    assert main(["train", "--data", "moons", "--conditional", "--out", str(tmp_path / "m.pt"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --conditional") and "moons" in err
    # An argument argparse rejects: usage error, exit status 2, the bad choice named on stderr.
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", "nonsense", "--out", str(tmp_path / "m.pt")])
    assert exc.value.code == 2 and "nonsense" in capsys.readouterr().err
    ckpt = tmp_path / "plain.pt"
    dl.save_checkpoint(ckpt, dl.TimeMLP(dim=2, hidden=8, depth=1, emb_dim=8), {"sample_shape": [2], "T": 1000})
    assert main(["sample", "--ckpt", str(ckpt), "--label", "1", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --label") and "conditional" in err and "plain.pt" in err
    assert not (tmp_path / "x.png").exists()


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "diffusion_lab", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "train" in out.stdout and "sample" in out.stdout
    # a bad subcommand through the same entry point: argparse's usage error, status 2
    bad = subprocess.run([sys.executable, "-m", "diffusion_lab", "frobnicate"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "frobnicate" in bad.stderr


def test_shipped_checkpoints_record_a_portable_command():
    """Every shipped checkpoint records the command that made it, with no machine's absolute path
    (chapter 10 prints these commands; an absolute --out path leaked /work/main into the book)."""
    from pathlib import Path
    import shlex

    import torch

    ckpts = sorted((Path(dl.__file__).parent / "checkpoints").glob("*.pt"))
    assert ckpts
    for path in ckpts:
        meta = torch.load(path, map_location="cpu", weights_only=False)["meta"]
        words = shlex.split(meta["command"])
        assert words[0] == "python", (path.name, meta["command"])
        assert not [w for w in words if w.startswith("/")], (path.name, meta["command"])
