"""Gaussian building blocks: KL divergences, log densities and the reparameterization trick.

Closed-form checks against torch.distributions and scipy, Monte Carlo checks with tolerances
derived from the standard error, analytic gradients, and bad input.
"""
import math

import numpy as np
import pytest
import torch
from scipy import stats

import diffusion_lab as dl

D = torch.distributions


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _random_params(n, seed, dtype=torch.float64):
    g = _gen(seed)
    mu1 = torch.randn(n, generator=g, dtype=dtype) * 2
    mu2 = torch.randn(n, generator=g, dtype=dtype) * 2
    lv1 = torch.randn(n, generator=g, dtype=dtype)
    lv2 = torch.randn(n, generator=g, dtype=dtype)
    return mu1, lv1, mu2, lv2


# ---------------------------------------------------------------------------------------
# 1. closed form
# ---------------------------------------------------------------------------------------
def test_kl_normal_matches_torch_distributions():
    mu1, lv1, mu2, lv2 = _random_params(200, 0)
    ours = dl.kl_normal(mu1, lv1, mu2, lv2)
    ref = D.kl_divergence(D.Normal(mu1, (0.5 * lv1).exp()), D.Normal(mu2, (0.5 * lv2).exp()))
    assert ours.shape == (200,)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_kl_normal_is_asymmetric_and_zero_only_on_the_diagonal():
    mu1, lv1, mu2, lv2 = _random_params(50, 1)
    torch.testing.assert_close(dl.kl_normal(mu1, lv1, mu1, lv1), torch.zeros(50, dtype=torch.float64))
    forward = dl.kl_normal(mu1, lv1, mu2, lv2)
    backward = dl.kl_normal(mu2, lv2, mu1, lv1)
    assert bool((forward > 0).all()) and bool((backward > 0).all())
    # Equal variances make KL symmetric; different ones must not (catches swapped arguments).
    assert not torch.allclose(forward, backward)
    # Hand-computed: KL(N(0, 1) || N(1, 4)) = log 2 + (1 + 1) / 8 - 1/2.
    one = torch.tensor(1.0, dtype=torch.float64)
    kl = dl.kl_normal(0 * one, 0 * one, one, math.log(4) * one)
    assert abs(kl.item() - (math.log(2) + 2 / 8 - 0.5)) < 1e-12


@pytest.mark.parametrize("mu1, var1, mu2, var2", [(0.3, 0.5, -1.0, 2.0), (2.0, 3.0, 0.0, 0.25), (0.0, 1.0, 0.0, 1.5)])
def test_kl_normal_matches_monte_carlo(mu1, var1, mu2, var2):
    # KL(p || q) = E_p[log p(x) - log q(x)], estimated with n draws from p; the log densities
    # come from scipy so the estimate shares no code with the library. The estimate's error
    # is ~N(0, SE^2), SE = std(log ratio) / sqrt(n); a 5 SE band fails with probability
    # ~6e-7 and the seed is fixed anyway.
    n = 200_000
    rng = np.random.default_rng(12)
    x = rng.normal(mu1, math.sqrt(var1), size=n)
    log_ratio = stats.norm.logpdf(x, mu1, math.sqrt(var1)) - stats.norm.logpdf(x, mu2, math.sqrt(var2))
    mc, se = log_ratio.mean(), log_ratio.std(ddof=1) / math.sqrt(n)
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    kl = dl.kl_normal(t(mu1), t(math.log(var1)), t(mu2), t(math.log(var2))).item()
    assert abs(kl - mc) < 5 * se, f"closed form {kl:.5f} vs MC {mc:.5f} +- {se:.5f}"


def test_kl_normal_gradients_are_analytic():
    # dKL/dmu1 = (mu1 - mu2) / var2, dKL/dlogvar1 = (var1 / var2 - 1) / 2,
    # dKL/dmu2 = -(mu1 - mu2) / var2, dKL/dlogvar2 = (1 - (var1 + (mu1 - mu2)^2) / var2) / 2.
    mu1, lv1, mu2, lv2 = (p.requires_grad_() for p in _random_params(20, 2))
    dl.kl_normal(mu1, lv1, mu2, lv2).sum().backward()
    v1, v2, d = lv1.detach().exp(), lv2.detach().exp(), (mu1 - mu2).detach()
    torch.testing.assert_close(mu1.grad, d / v2)
    torch.testing.assert_close(mu2.grad, -d / v2)
    torch.testing.assert_close(lv1.grad, 0.5 * (v1 / v2 - 1))
    torch.testing.assert_close(lv2.grad, 0.5 * (1 - (v1 + d ** 2) / v2))


def test_kl_normal_broadcasts():
    mu1, lv1, _, _ = _random_params(6, 3)
    mu1, lv1 = mu1.reshape(2, 3), lv1.reshape(2, 3)
    zero = torch.zeros((), dtype=torch.float64)
    torch.testing.assert_close(dl.kl_normal(mu1, lv1, zero, zero), dl.kl_std_normal(mu1, lv1))


def test_kl_std_normal_matches_torch_distributions_and_formula():
    mu, lv, _, _ = _random_params(100, 4)
    ours = dl.kl_std_normal(mu, lv)
    ref = D.kl_divergence(D.Normal(mu, (0.5 * lv).exp()), D.Normal(torch.zeros_like(mu), torch.ones_like(mu)))
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours, 0.5 * (mu ** 2 + lv.exp() - lv - 1))
    assert dl.kl_std_normal(torch.zeros(3), torch.zeros(3)).abs().max().item() == 0.0


def test_kl_keeps_dtype_float32():
    mu, lv, _, _ = _random_params(10, 5, dtype=torch.float32)
    assert dl.kl_std_normal(mu, lv).dtype == torch.float32
    assert dl.kl_normal(mu, lv, lv, mu).dtype == torch.float32


def test_gaussian_log_prob_matches_torch_distributions():
    g = _gen(6)
    x, mu, lv = (torch.randn(40, generator=g, dtype=torch.float64) for _ in range(3))
    ref = D.Normal(mu, (0.5 * lv).exp()).log_prob(x)
    torch.testing.assert_close(dl.gaussian_log_prob(x, mu, lv), ref)


# ---------------------------------------------------------------------------------------
# reparameterization trick
# ---------------------------------------------------------------------------------------
def test_reparameterize_moments():
    # n draws of N(mu, var): the sample mean has SE sqrt(var / n), the sample variance has
    # SE var * sqrt(2 / (n - 1)); 5 SE bands, fixed seed. A ks test adds the shape.
    n = 100_000
    mu = torch.tensor([1.5, -0.5], dtype=torch.float64)
    lv = torch.tensor([math.log(0.25), math.log(4.0)], dtype=torch.float64)
    z = dl.reparameterize(mu.expand(n, 2), lv.expand(n, 2), generator=_gen(7))
    assert z.shape == (n, 2) and z.dtype == torch.float64
    var = lv.exp()
    assert ((z.mean(0) - mu).abs() < 5 * (var / n).sqrt()).all(), z.mean(0)
    assert ((z.var(0) - var).abs() < 5 * var * math.sqrt(2 / (n - 1))).all(), z.var(0)
    for j in range(2):
        p = stats.kstest(z[:, j].numpy(), "norm", args=(mu[j].item(), var[j].sqrt().item())).pvalue
        assert p > 1e-4


def test_reparameterize_broadcasts_mu_and_logvar():
    z = dl.reparameterize(torch.zeros(5, 1), torch.zeros(1, 3), generator=_gen(0))
    assert z.shape == (5, 3)


@pytest.mark.parametrize("mu_shape, lv_shape", [((4, 1), (1, 3)), ((4, 3), (3,)), ((3,), (4, 3))])
def test_reparameterize_is_mu_plus_sigma_times_the_generators_draws(mu_shape, lv_shape):
    # z = mu + exp(logvar / 2) eps with eps the generator's next standard normal draws of the
    # broadcast shape, in mu's dtype. Noise drawn for only mu's or only logvar's shape would repeat
    # across the broadcast rows; float32 noise for float64 inputs is rounded to float32.
    g = _gen(20)
    mu = torch.randn(mu_shape, generator=g, dtype=torch.float64)
    lv = torch.randn(lv_shape, generator=g, dtype=torch.float64)
    z = dl.reparameterize(mu, lv, generator=_gen(21))
    eps = torch.randn((4, 3), generator=_gen(21), dtype=torch.float64)
    assert z.shape == (4, 3) and z.dtype == torch.float64
    # tight tolerance: float32 draws agree with float64 ones only to ~1e-8 relative
    torch.testing.assert_close(z, mu + torch.exp(lv / 2) * eps, rtol=1e-13, atol=1e-14)


def test_reparameterize_without_a_generator_uses_the_global_rng_on_mus_device():
    torch.manual_seed(5)
    z = dl.reparameterize(torch.zeros(2, 3), torch.zeros(2, 3))
    torch.manual_seed(5)
    torch.testing.assert_close(z, torch.randn(2, 3))


def test_reparameterize_gradients_are_analytic():
    # z = mu + exp(logvar / 2) eps  =>  dz/dmu = 1 and dz/dlogvar = exp(logvar / 2) eps / 2 = (z - mu) / 2.
    g = _gen(8)
    mu = torch.randn(30, generator=g, dtype=torch.float64).requires_grad_()
    lv = torch.randn(30, generator=g, dtype=torch.float64).requires_grad_()
    w = torch.randn(30, generator=g, dtype=torch.float64)  # a random cotangent, so a sum does not hide mistakes
    z = dl.reparameterize(mu, lv, generator=_gen(9))
    (w * z).sum().backward()
    torch.testing.assert_close(mu.grad, w)
    torch.testing.assert_close(lv.grad, w * 0.5 * (z - mu).detach())


def test_reparameterize_generator_determinism_and_global_rng_untouched():
    mu, lv = torch.zeros(1000), torch.zeros(1000)
    state = torch.random.get_rng_state()
    a = dl.reparameterize(mu, lv, generator=_gen(10))
    b = dl.reparameterize(mu, lv, generator=_gen(10))
    c = dl.reparameterize(mu, lv, generator=_gen(11))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(state, torch.random.get_rng_state()), "library code touched the global RNG"
    # The noise is standard normal noise from the generator (same draws as torch.randn).
    torch.testing.assert_close(a, torch.randn(1000, generator=_gen(10)))


def test_reparameterize_zero_variance_limit_is_mu():
    mu = torch.tensor([0.3, -2.0], dtype=torch.float64)
    z = dl.reparameterize(mu, torch.full((2,), -80.0, dtype=torch.float64), generator=_gen(0))
    torch.testing.assert_close(z, mu, atol=1e-15, rtol=0)


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------
GOOD = torch.zeros(3)


@pytest.mark.parametrize("pos, name", [(0, "mu1"), (1, "logvar1"), (2, "mu2"), (3, "logvar2")])
def test_kl_normal_bad_input(pos, name):
    args = [GOOD.clone() for _ in range(4)]
    args[pos] = torch.tensor([0.0, float("nan"), 1.0])
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        dl.kl_normal(*args)
    args[pos] = [0.0, 0.0, 0.0]
    with pytest.raises(TypeError, match=rf"^{name}\b"):
        dl.kl_normal(*args)
    args[pos] = torch.zeros(3, dtype=torch.long)
    with pytest.raises(TypeError, match=rf"^{name}\b"):
        dl.kl_normal(*args)
    args[pos] = torch.zeros(4)
    with pytest.raises(ValueError, match=r"^shapes must broadcast together"):
        dl.kl_normal(*args)


@pytest.mark.parametrize("pos, name", [(0, "mu"), (1, "logvar")])
@pytest.mark.parametrize("fn", [dl.kl_std_normal, dl.reparameterize])
def test_two_argument_gaussian_functions_bad_input(fn, pos, name):
    args = [GOOD.clone(), GOOD.clone()]
    args[pos] = torch.tensor([float("inf"), 0.0, 0.0])
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        fn(*args)
    args[pos] = 0.0
    with pytest.raises(TypeError, match=rf"^{name}\b"):
        fn(*args)
    args[pos] = torch.zeros(2)
    with pytest.raises(ValueError, match=r"^shapes must broadcast together"):
        fn(*args)


def test_gaussian_log_prob_bad_input():
    with pytest.raises(ValueError, match=r"^x\b"):
        dl.gaussian_log_prob(torch.tensor([float("nan")]), GOOD, GOOD)
    with pytest.raises(TypeError, match=r"^logvar\b"):
        dl.gaussian_log_prob(GOOD, GOOD, "0")
    with pytest.raises(ValueError, match=r"^mu\b"):    # a NaN mean is refused, not turned into NaN
        dl.gaussian_log_prob(GOOD, torch.tensor([0.0, float("nan"), 0.0]), GOOD)
    with pytest.raises(TypeError, match=r"^mu\b"):
        dl.gaussian_log_prob(GOOD, [0.0, 0.0, 0.0], GOOD)


def test_reparameterize_rejects_a_non_generator():
    with pytest.raises(TypeError, match=r"^generator\b"):
        dl.reparameterize(GOOD, GOOD, generator=0)


def test_get_device():
    dev = dl.get_device()
    assert isinstance(dev, torch.device)
    if torch.cuda.is_available():
        assert dev.type == "cuda"
    elif not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        assert dev.type == "cpu"
