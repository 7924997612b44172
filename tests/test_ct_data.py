"""The 2-D toys added for the sampler benchmark: a checkerboard (sharp corners) and a thin ring."""
import math

import pytest
import torch

import diffusion_lab as dl


def test_checkerboard_lies_on_the_dark_squares_uniformly():
    """Every point is in [-2, 2]^2 on a square whose cell indices have an even sum; the 8 dark squares each
    get 1/8 of the points within 4 binomial standard errors, and each square is filled uniformly (mean of
    the position inside its cell 0.5 within 4 SE). A board with the wrong parity or cells off by one fails."""
    x = dl.checkerboard(16000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (16000, 2) and bool((x.abs() <= 2).all())
    cell = torch.floor(x + 2).long().clamp(0, 3)
    assert bool(((cell[:, 0] + cell[:, 1]) % 2 == 0).all())
    counts = torch.bincount(cell[:, 0] * 4 + cell[:, 1], minlength=16).double()
    dark = counts[counts > 0]
    assert dark.numel() == 8
    se = math.sqrt(16000 * (1 / 8) * (7 / 8))
    assert bool(((dark - 2000).abs() < 4 * se).all())
    inside = (x + 2 - cell).double()
    assert bool(((inside.mean(0) - 0.5).abs() < 4 * math.sqrt(1 / 12 / 16000)).all())


def test_thin_ring_radius_and_width():
    x = dl.thin_ring(20000, radius=1.5, width=0.02, generator=torch.Generator().manual_seed(1)).double()
    r = x.norm(dim=1)
    assert abs(float(r.mean()) - 1.5) < 4 * 0.02 / math.sqrt(20000) + 2e-4     # E|r| = 1.5 + O(width^2 / r)
    assert abs(float(r.std()) - 0.02) < 0.002
    ang = torch.atan2(x[:, 1], x[:, 0])
    assert abs(float(ang.mean())) < 4 * math.pi / math.sqrt(3 * 20000)


@pytest.mark.parametrize("name", ["checkerboard", "thin_ring"])
def test_make_toy_knows_the_new_toys(name):
    x, labels = dl.make_toy(name, 10, torch.Generator().manual_seed(2))
    assert x.shape == (10, 2) and x.dtype == torch.float32 and labels is None


@pytest.mark.parametrize("call, match", [
    (lambda: dl.checkerboard(0), r"n must be an integer in \[1, inf\], got 0"),
    (lambda: dl.checkerboard(5, cells=1), r"cells must be an integer in \[2, inf\], got 1"),
    (lambda: dl.thin_ring(5, radius=0.0), r"radius must be in \(0, inf\], got 0.0"),
    (lambda: dl.thin_ring(5, width=-1.0), r"width must be in \[0, inf\], got -1.0"),
])
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
