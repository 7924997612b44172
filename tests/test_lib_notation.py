"""Notation conversions (diffusion_lab.notation): both directions, round trips, known values,
the identities each notation is defined by, and bad input."""
import math

import pytest
import torch

import diffusion_lab as dl

S = dl.linear_schedule()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- Su's notation
def test_su_known_values():
    a, b = dl.alpha_bar_to_su(0.36)
    assert isinstance(a, float) and isinstance(b, float)
    assert a == pytest.approx(0.6) and b == pytest.approx(0.8)
    assert dl.alpha_bar_to_su(1.0) == (1.0, 0.0)
    assert dl.alpha_bar_to_su(0.0) == (0.0, 1.0)
    assert dl.su_to_alpha_bar(0.6) == pytest.approx(0.36)
    assert dl.su_to_alpha_bar(0.6, 0.8) == pytest.approx(0.36)


def test_su_round_trips_on_a_schedule():
    ab = S.alpha_bars                                            # (T,) float64
    a, b = dl.alpha_bar_to_su(ab)
    assert a.dtype == torch.float64 and a.shape == ab.shape
    torch.testing.assert_close(a ** 2 + b ** 2, torch.ones_like(ab))
    torch.testing.assert_close(dl.su_to_alpha_bar(a, b), ab)
    torch.testing.assert_close(dl.alpha_bar_to_su(dl.su_to_alpha_bar(a))[0], a)


def test_su_per_step_and_cumulative_agree():
    # Su's per-step alpha_t = sqrt(DDPM alpha_t); his alpha_bar_t is their product, i.e. sqrt(DDPM alpha_bar_t).
    alpha_su, beta_su = dl.alpha_bar_to_su(S.alphas)
    torch.testing.assert_close(alpha_su ** 2 + beta_su ** 2, torch.ones_like(alpha_su))
    torch.testing.assert_close(beta_su ** 2, S.betas)
    torch.testing.assert_close(torch.cumprod(alpha_su, 0), dl.alpha_bar_to_su(S.alpha_bars)[0])


def test_su_forward_sample_is_the_ddpm_one():
    g = _gen(0)
    x0, eps = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    t = 400
    ab = S.alpha_bars[t].item()
    a, b = dl.alpha_bar_to_su(ab)
    torch.testing.assert_close(a * x0 + b * eps, math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps)


def test_su_float32_keeps_its_dtype():
    ab = torch.tensor([0.9999, 0.5, 1e-4], dtype=torch.float32)
    a, b = dl.alpha_bar_to_su(ab)
    assert a.dtype == b.dtype == torch.float32
    torch.testing.assert_close(b, torch.tensor([0.01, math.sqrt(0.5), math.sqrt(1 - 1e-4)]))


# --------------------------------------------------------------------------- sigma form
def test_sigma_known_values():
    assert dl.alpha_bar_to_sigma(0.5) == pytest.approx(1.0)
    assert dl.alpha_bar_to_sigma(0.2) == pytest.approx(2.0)
    assert dl.alpha_bar_to_sigma(1.0) == 0.0
    assert dl.sigma_to_alpha_bar(0.0) == 1.0
    assert dl.sigma_to_alpha_bar(2.0) == pytest.approx(0.2)


def test_sigma_round_trips_and_snr():
    ab = S.alpha_bars
    sigma = dl.alpha_bar_to_sigma(ab)
    assert bool((sigma[1:] > sigma[:-1]).all())                  # noise grows with t
    torch.testing.assert_close(dl.sigma_to_alpha_bar(sigma), ab)
    torch.testing.assert_close(sigma ** -2, S.snr)               # sigma^2 = 1 / SNR
    s = torch.tensor([0.0, 0.01, 1.0, 80.0])
    torch.testing.assert_close(dl.alpha_bar_to_sigma(dl.sigma_to_alpha_bar(s)), s)


def test_sigma_form_rescales_the_forward_sample():
    g = _gen(1)
    x0, eps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    ab = S.alpha_bars[250].item()
    xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
    torch.testing.assert_close(xt / math.sqrt(ab), x0 + dl.alpha_bar_to_sigma(ab) * eps)


# --------------------------------------------------------------------------- guidance
def test_cfg_conventions():
    assert dl.cfg_w_to_scale(0.0) == 1.0
    assert dl.cfg_w_to_scale(3.0) == 4.0
    assert dl.cfg_scale_to_w(1.0) == 0.0
    assert dl.cfg_scale_to_w(0.0) == -1.0
    for w in (-0.5, 0.0, 0.3, 7.5):
        assert dl.cfg_scale_to_w(dl.cfg_w_to_scale(w)) == pytest.approx(w)
    g = _gen(2)
    u, c = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g)
    w = 2.0
    # Ho & Salimans 2021, Eq. 6: (1 + w) eps_c - w eps_u
    torch.testing.assert_close(dl.cfg_eps(u, c, dl.cfg_w_to_scale(w)), (1 + w) * c - w * u)
    w_t = torch.tensor([0.0, 1.5])
    torch.testing.assert_close(dl.cfg_scale_to_w(dl.cfg_w_to_scale(w_t)), w_t)


# --------------------------------------------------------------------------- Langevin
def test_langevin_conventions():
    assert dl.langevin_eta_to_delta(0.01) == pytest.approx(0.02)
    assert dl.langevin_delta_to_eta(0.02) == pytest.approx(0.01)
    for eta in (1e-4, 0.05, 1.0):
        assert dl.langevin_delta_to_eta(dl.langevin_eta_to_delta(eta)) == pytest.approx(eta)


def test_langevin_steps_coincide():
    # seed 002: x + eta s + sqrt(2 eta) xi;  seed 003 (SGLD): x + delta/2 s + sqrt(delta) xi
    score = lambda x: -x                                         # N(0, I)
    eta = 0.03
    delta = dl.langevin_eta_to_delta(eta)
    x = torch.randn(6, 2, generator=_gen(3), dtype=torch.float64)
    xi = torch.randn(6, 2, generator=_gen(4), dtype=torch.float64)
    torch.testing.assert_close(x + eta * score(x) + math.sqrt(2 * eta) * xi,
                               x + delta / 2 * score(x) + math.sqrt(delta) * xi)
    # and the package's langevin_sample takes eta as its step_size
    out = dl.langevin_sample(score, x, step_size=dl.langevin_delta_to_eta(delta), n_steps=1, generator=_gen(5))
    z = torch.randn(6, 2, generator=_gen(5), dtype=torch.float64)
    torch.testing.assert_close(out, x + delta / 2 * score(x) + math.sqrt(delta) * z)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("fn, arg, name", [
    (dl.alpha_bar_to_su, 1.5, "alpha_bar"),
    (dl.alpha_bar_to_su, -0.1, "alpha_bar"),
    (dl.alpha_bar_to_su, float("nan"), "alpha_bar"),
    (dl.alpha_bar_to_su, torch.tensor([0.5, 1.2]), "alpha_bar"),
    (dl.alpha_bar_to_su, torch.tensor([0.5, float("nan")]), "alpha_bar"),
    (dl.su_to_alpha_bar, 2.0, "alpha_bar_su"),
    (dl.alpha_bar_to_sigma, 0.0, "alpha_bar"),
    (dl.alpha_bar_to_sigma, torch.tensor([0.0, 0.5]), "alpha_bar"),
    (dl.sigma_to_alpha_bar, -1.0, "sigma"),
    (dl.sigma_to_alpha_bar, float("inf"), "sigma"),
    (dl.cfg_w_to_scale, float("nan"), "w"),
    (dl.cfg_scale_to_w, float("inf"), "scale"),
    (dl.langevin_eta_to_delta, 0.0, "eta"),
    (dl.langevin_eta_to_delta, -0.1, "eta"),
    (dl.langevin_delta_to_eta, 0.0, "delta"),
])
def test_bad_values_raise_value_error_naming_the_argument(fn, arg, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        fn(arg)


@pytest.mark.parametrize("fn, arg, name", [
    (dl.alpha_bar_to_su, "0.5", "alpha_bar"),
    (dl.alpha_bar_to_su, None, "alpha_bar"),
    (dl.alpha_bar_to_su, True, "alpha_bar"),
    (dl.alpha_bar_to_sigma, torch.tensor([1, 1]), "alpha_bar"),
    (dl.sigma_to_alpha_bar, [0.1, 0.2], "sigma"),
    (dl.cfg_w_to_scale, "3", "w"),
    (dl.cfg_scale_to_w, None, "scale"),
    (dl.langevin_eta_to_delta, "0.1", "eta"),
    (dl.langevin_delta_to_eta, [0.1], "delta"),
])
def test_bad_types_raise_type_error_naming_the_argument(fn, arg, name):
    with pytest.raises(TypeError, match=rf"\b{name}\b"):
        fn(arg)


def test_su_pair_must_lie_on_the_unit_circle():
    with pytest.raises(ValueError, match="alpha_bar_su\\^2 \\+ beta_bar_su\\^2"):
        dl.su_to_alpha_bar(0.6, 0.6)
    with pytest.raises(ValueError, match="alpha_bar_su\\^2 \\+ beta_bar_su\\^2"):
        dl.su_to_alpha_bar(torch.tensor([0.6, 0.6]), torch.tensor([0.8, 0.7]))
    with pytest.raises(TypeError, match="both"):
        dl.su_to_alpha_bar(torch.tensor([0.6]), 0.8)
    with pytest.raises(ValueError, match="beta_bar_su"):
        dl.su_to_alpha_bar(0.6, 1.5)
    with pytest.raises(ValueError, match="broadcast"):
        dl.su_to_alpha_bar(torch.tensor([0.6, 0.8]), torch.tensor([0.8, 0.6, 0.0]))


def test_zero_dim_and_empty_tensors():
    out = dl.alpha_bar_to_sigma(torch.tensor(0.5, dtype=torch.float64))
    assert isinstance(out, torch.Tensor) and out.ndim == 0
    torch.testing.assert_close(out, torch.tensor(1.0, dtype=torch.float64))
    empty = torch.empty(0)
    assert dl.sigma_to_alpha_bar(empty).shape == (0,)
