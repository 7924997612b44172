"""Noise schedules: index convention, float64, the cosine formula recomputed independently, bad input."""
import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch

import diffusion_lab as dl


def test_linear_schedule_betas_alphas_alpha_bars():
    s = dl.linear_schedule(T=1000, beta_start=1e-4, beta_end=0.02)
    assert s.T == 1000
    for name in ("betas", "alphas", "alpha_bars"):
        v = getattr(s, name)
        assert v.shape == (1000,) and v.dtype == torch.float64, name
    expected = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(s.betas.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(s.alphas.numpy(), 1 - expected, rtol=1e-12)
    np.testing.assert_allclose(s.alpha_bars.numpy(), np.cumprod(1 - expected), rtol=1e-12)


def test_index_convention_alpha_bar_t_is_product_up_to_and_including_t():
    # alpha_bars[t] = prod_{s <= t} alphas[s]: alpha_bars[0] = alphas[0], not 1.
    s = dl.linear_schedule(T=7, beta_start=0.05, beta_end=0.4)
    for t in range(7):
        prod = 1.0
        for j in range(t + 1):
            prod *= 1.0 - float(s.betas[j])
        assert abs(float(s.alpha_bars[t]) - prod) < 1e-15, t
    assert float(s.alpha_bars[0]) == pytest.approx(1 - 0.05, abs=1e-15)
    assert bool((s.alpha_bars[1:] < s.alpha_bars[:-1]).all())


def test_T_equals_one_is_allowed():
    s = dl.linear_schedule(T=1, beta_start=0.3, beta_end=0.3)
    assert s.T == 1 and float(s.alpha_bars[0]) == pytest.approx(0.7)


def _cosine_reference(T, s=0.008, max_beta=0.999):
    # Nichol & Dhariwal 2021, Eq. 17 written out with math.cos, one beta at a time:
    # beta_t = min(1 - f((t + 1) / T) / f(t / T), max_beta), f(u) = cos^2((u + s) / (1 + s) pi / 2).
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return np.array([min(1 - f((t + 1) / T) / f(t / T), max_beta) for t in range(T)])


@pytest.mark.parametrize("T", [10, 1000])
def test_cosine_schedule_matches_an_independent_computation(T):
    s = dl.cosine_schedule(T=T)
    assert s.betas.dtype == torch.float64 and s.T == T
    betas = _cosine_reference(T)
    np.testing.assert_allclose(s.betas.numpy(), betas, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(s.alpha_bars.numpy(), np.cumprod(1 - betas), rtol=1e-9, atol=1e-15)
    # Without clipping, alpha_bar_t = f(t + 1) / f(0) exactly (the telescoping product).
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, T // 3, T // 2):
        assert float(s.alpha_bars[t]) == pytest.approx(f((t + 1) / T) / f(0), rel=1e-9)


def test_cosine_schedule_max_beta_clips_the_last_betas():
    s = dl.cosine_schedule(T=1000, max_beta=0.5)
    assert float(s.betas.max()) == pytest.approx(0.5, abs=1e-15)
    np.testing.assert_allclose(s.betas.numpy(), _cosine_reference(1000, max_beta=0.5), rtol=1e-9, atol=1e-15)
    assert float(dl.cosine_schedule(T=1000).betas[-1]) == pytest.approx(0.999)


def test_schedule_properties():
    s = dl.linear_schedule(T=50, beta_start=0.01, beta_end=0.2)
    ab = s.alpha_bars
    torch.testing.assert_close(s.alpha_bars_prev, torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]]))
    # beta_tilde_t = beta_t (1 - ab_{t-1}) / (1 - ab_t), zero at t = 0.
    torch.testing.assert_close(s.posterior_variances[1:], s.betas[1:] * (1 - ab[:-1]) / (1 - ab[1:]))
    assert float(s.posterior_variances[0]) == 0.0
    torch.testing.assert_close(s.snr, ab / (1 - ab))


def test_schedule_from_custom_betas_is_float64_and_frozen():
    s = dl.Schedule(torch.tensor([0.1, 0.2, 0.3], dtype=torch.float32))
    assert s.betas.dtype == torch.float64 and s.T == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.betas = torch.tensor([0.5])
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.name = "other"


def test_make_schedule():
    # at T = 1000 the named linear schedule is Ho et al.'s; for other T its betas scale by 1000 / T
    torch.testing.assert_close(dl.make_schedule("linear", 1000).betas, dl.linear_schedule().betas)
    torch.testing.assert_close(dl.make_schedule("linear", 100).betas, dl.linear_schedule(100, 1e-3, 0.2).betas)
    for T in (50, 100, 250):   # so that x_T is close to pure noise whatever T is
        assert dl.make_schedule("linear", T).alpha_bars[-1] < 1e-3
    torch.testing.assert_close(dl.make_schedule("cosine", 20).betas, dl.cosine_schedule(20).betas)
    with pytest.raises(ValueError, match=r"^schedule name must be .linear. or .cosine., got .quadratic.$"):
        dl.make_schedule("quadratic", 20)


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [dl.linear_schedule, dl.cosine_schedule])
@pytest.mark.parametrize("T, exc", [(0, ValueError), (-3, ValueError), (2.5, TypeError), ("10", TypeError), (True, TypeError)])
def test_bad_T(fn, T, exc):
    with pytest.raises(exc, match=r"^T\b"):
        fn(T=T)


@pytest.mark.parametrize("arg", ["beta_start", "beta_end"])
@pytest.mark.parametrize("value", [0.0, 1.0, -0.1, 1.5, float("nan"), float("inf")])
def test_linear_schedule_beta_outside_open_unit_interval(arg, value):
    with pytest.raises(ValueError, match=rf"^{arg}\b"):
        dl.linear_schedule(T=10, **{arg: value})


def test_linear_schedule_beta_wrong_type():
    with pytest.raises(TypeError, match=r"^beta_start\b"):
        dl.linear_schedule(T=10, beta_start="0.1")


@pytest.mark.parametrize("kw, name", [({"s": -0.1}, "s"), ({"s": float("nan")}, "s"), ({"max_beta": 0.0}, "max_beta"),
                                      ({"max_beta": 1.0}, "max_beta"), ({"max_beta": 2.0}, "max_beta")])
def test_cosine_schedule_bad_parameters(kw, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        dl.cosine_schedule(T=10, **kw)


@pytest.mark.parametrize("betas", [[0.1, 0.0], [0.1, 1.0], [0.1, -0.2], [0.1, float("nan")], [[0.1, 0.2]], []])
def test_schedule_rejects_bad_betas(betas):
    with pytest.raises(ValueError, match=r"^(every beta|betas) must be"):
        dl.Schedule(torch.tensor(betas, dtype=torch.float64))


def test_schedule_rejects_non_tensor_betas():
    with pytest.raises(TypeError, match=r"^betas\b"):
        dl.Schedule([0.1, 0.2])


def test_schedule_factories_defaults_smallest_T_and_messages():
    d = dl.make_schedule()
    assert d.name == "linear" and d.T == 1000
    torch.testing.assert_close(d.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    # T = 2 scales Ho et al.'s betas by 500: beta_end = 10 is capped at 0.999 (a cap >= 1 is refused)
    torch.testing.assert_close(dl.make_schedule("linear", 2).betas, torch.tensor([0.05, 0.999], dtype=torch.float64))
    assert dl.make_schedule("linear", 1).T == 1 and dl.cosine_schedule(T=1).T == 1
    c = dl.cosine_schedule()
    assert c.T == 1000
    torch.testing.assert_close(c.betas, dl.cosine_schedule(1000, 0.008, 0.999).betas)
    with pytest.raises(ValueError, match=r"^T must be an integer in \[1, inf\], got 0$"):
        dl.make_schedule("linear", 0)
    with pytest.raises(ValueError, match=r"^T must be an integer in \[1, inf\], got 0$"):
        dl.cosine_schedule(T=0)
    with pytest.raises(ValueError, match=r"^s must be in \[0, inf\], got -1.0$"):
        dl.cosine_schedule(T=10, s=-1.0)
    with pytest.raises(ValueError, match=r"^max_beta must be in \(0, 1\), got 1.0$"):
        dl.cosine_schedule(T=10, max_beta=1.0)


def test_check_t_and_at_bounds_messages_and_dtype():
    # Found by the mutation run of 2026-12-06 (CONTRIBUTING.md): each line kills a surviving mutant.
    s = dl.linear_schedule(T=5, beta_start=0.1, beta_end=0.5)
    # both ends of [low, T - 1] are allowed, as a tensor and as an int
    assert s.check_t(torch.tensor([0, 4], dtype=torch.int32)).tolist() == [0, 4]
    assert s.check_t(torch.tensor([2, 4]), low=2).tolist() == [2, 4]
    assert s.check_t(0).item() == 0 and s.check_t(4).item() == 4 and s.check_t(2, low=2).item() == 2
    with pytest.raises(ValueError, match=r"^t must be in \[0, 4\] \(T = 5\), got values from 1 to 5$"):
        s.check_t(torch.tensor([1, 5]))
    with pytest.raises(ValueError, match=r"^t_prev must be in \[1, 4\] \(T = 5\), got values from 0 to 3$"):
        s.check_t(torch.tensor([0, 3]), name="t_prev", low=1)
    with pytest.raises(ValueError, match=r"^t must be an integer in \[0, 4\], got 5$"):
        s.check_t(5)
    with pytest.raises(ValueError, match=r"^t must be an integer in \[1, 4\], got 0$"):
        s.check_t(0, low=1)
    for dtype in (torch.float32, torch.bool):
        with pytest.raises(TypeError, match=rf"^t must hold integer timesteps, got dtype {dtype}$"):
            s.check_t(torch.zeros(2, dtype=dtype))
    # at: values[t] shaped (B, 1, 1) in like's dtype, or in dtype= when given
    like = torch.zeros(3, 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")    # a tensor t is used as it is, not copy-constructed (a UserWarning)
        out = s.at(s.alpha_bars, torch.tensor([0, 2, 4]), like, dtype=torch.float64)
        assert s.at(s.alpha_bars, torch.tensor([0, 2, 4]), like).dtype == torch.float32
    assert out.shape == (3, 1, 1) and out.dtype == torch.float64
    assert out.flatten().tolist() == s.alpha_bars[[0, 2, 4]].tolist()
    assert s.at(s.alpha_bars, 2, like, dtype=torch.float64).item() == s.alpha_bars[2].item()
    with pytest.raises(ValueError, match=r"^t has 2 entries but the batch has 3$"):
        s.at(s.alpha_bars, torch.tensor([0, 1]), like)
    assert dl.cosine_schedule(T=10).name == "cosine" and dl.linear_schedule(T=10).name == "linear"
