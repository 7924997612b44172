"""Oracle checks: DDPM and DDIM driven by the exact epsilon of a Gaussian / Gaussian mixture
(GaussianMixture.eps_model) must recover the target's moments and mode weights.

Tolerances. Each compared statistic gets 5 standard errors (a fixed seed makes the tests
deterministic; 5 SE would fail by chance with probability ~1e-6 anyway) plus an allowance
for the sampler's own discretization bias, computed in closed form: for Gaussian data with
the exact epsilon both samplers are linear-Gaussian recursions, and with the linear
schedule (T = 1000) the output variance along a direction of data variance lambda in
[0.16, 2] is within 2% of lambda for DDPM, 1% for DDIM with 1000 steps and 3% for DDIM
with 250 steps. (It grows for tiny lambda, so the targets avoid variances below 0.16.)
"""
import math

import numpy as np
import pytest
import torch

import diffusion_lab as dl

LINEAR = dl.linear_schedule()  # T = 1000, betas 1e-4 .. 0.02: small betas, so DDPM's Gaussian kernel is accurate
MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=torch.float64)  # eigenvalues 1.51 and 0.29, correlation 0.67
GAUSS = dl.GaussianMixture(MU[None], covs=COV[None])
MIX = dl.GaussianMixture([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]], stds=[0.5, 0.7, 0.4], weights=[0.5, 0.3, 0.2],
                         labels=[0, 1, 2])


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _assert_moments(x, mean, cov, ref, bias):
    """x: (n, D) samples; mean, cov: the target's; ref: a large exact sample used only to
    estimate the SE of the covariance entries (their 4th moments); bias: relative allowance."""
    x = x.double()
    n = x.shape[0]
    sd = cov.diagonal().sqrt()
    m_hat = x.mean(0)
    tol_m = 5 * sd / math.sqrt(n) + bias * sd
    assert bool(((m_hat - mean).abs() < tol_m).all()), f"mean {m_hat.tolist()} vs {mean.tolist()} (tol {tol_m.tolist()})"
    c_hat = torch.cov(x.T)
    r = ref.double() - mean
    prod_sd = (r[:, :, None] * r[:, None, :]).std(0)          # (D, D): SD of (x_i - m_i)(x_j - m_j)
    tol_c = 5 * prod_sd / math.sqrt(n) + bias * sd[:, None] * sd[None, :]
    assert bool(((c_hat - cov).abs() < tol_c).all()), f"cov {c_hat.tolist()} vs {cov.tolist()} (tol {tol_c.tolist()})"


def _assert_weights(x, mixture, weights):
    # Assign each sample to its most probable component; the components are > 6 stds apart,
    # so misassignment is negligible (< 1e-3). Counts are multinomial: SE sqrt(w (1 - w) / n).
    comp = mixture.class_log_probs(x.float()).argmax(1)
    n = x.shape[0]
    freq = torch.bincount(comp, minlength=len(weights)).double() / n
    se = (weights * (1 - weights) / n).sqrt()
    assert bool(((freq - weights).abs() < 5 * se).all()), f"weights {freq.tolist()} vs {weights.tolist()}"


def test_eps_model_is_the_hand_written_gaussian_epsilon():
    # For N(mu, Sigma): x_t ~ N(sqrt(ab) mu, ab Sigma + (1 - ab) I) and the exact epsilon is
    # E[eps | x_t] = sqrt(1 - ab) (ab Sigma + (1 - ab) I)^{-1} (x_t - sqrt(ab) mu).
    model = GAUSS.eps_model(LINEAR)
    x = torch.randn(6, 2, generator=_gen(0), dtype=torch.float64) * 2
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    out = model(x, t)
    for i in range(6):
        ab = LINEAR.alpha_bars[t[i]]
        cov_t = ab * COV + (1 - ab) * torch.eye(2, dtype=torch.float64)
        expected = (1 - ab).sqrt() * torch.linalg.solve(cov_t, x[i] - ab.sqrt() * MU)
        torch.testing.assert_close(out[i].double(), expected)


def test_ddpm_recovers_a_correlated_gaussian():
    x = dl.ddpm_sample(GAUSS.eps_model(LINEAR), LINEAR, (3000, 2), generator=_gen(1))
    ref, _ = GAUSS.sample(100_000, _gen(2))
    _assert_moments(x, MU, COV, ref, bias=0.02)


def test_ddim_full_steps_eta0_recovers_a_correlated_gaussian():
    x = dl.ddim_sample(GAUSS.eps_model(LINEAR), LINEAR, (3000, 2), steps=LINEAR.T, eta=0.0, generator=_gen(3))
    ref, _ = GAUSS.sample(100_000, _gen(4))
    _assert_moments(x, MU, COV, ref, bias=0.01)


def test_ddpm_recovers_a_mixture_moments_and_mode_weights():
    x = dl.ddpm_sample(MIX.eps_model(LINEAR), LINEAR, (3000, 2), generator=_gen(5))
    ref, _ = MIX.sample(100_000, _gen(6))
    _assert_moments(x, MIX.mean(), MIX.covariance(), ref, bias=0.02)
    _assert_weights(x, MIX, MIX.weights)


def test_ddim_250_steps_recovers_a_mixture_moments_and_mode_weights():
    x = dl.ddim_sample(MIX.eps_model(LINEAR), LINEAR, (3000, 2), steps=250, generator=_gen(7))
    ref, _ = MIX.sample(100_000, _gen(8))
    _assert_moments(x, MIX.mean(), MIX.covariance(), ref, bias=0.03)
    _assert_weights(x, MIX, MIX.weights)


def test_class_conditional_oracle_samples_only_the_requested_class():
    # eps_model passes cond through to the mixture restricted to that class.
    cond = torch.tensor([0, 2] * 200)
    x = dl.ddim_sample(MIX.eps_model(LINEAR), LINEAR, (400, 2), steps=100, cond=cond, generator=_gen(9))
    comp = MIX.class_log_probs(x).argmax(1)
    assert torch.equal(comp, cond)


def test_ddim_invert_then_sample_reconstructs_data_with_the_oracle():
    # The inversion reuses eps at the previous point (first order), so the round trip is exact
    # only as steps -> infinity; the error is ~c / steps (measured 0.06 at 100 steps and 0.006
    # at 1000 for this Gaussian). At 250 steps we require < 0.05 everywhere: a wrong index
    # or sign gives errors of order 1.
    model = GAUSS.eps_model(LINEAR)
    x0, _ = GAUSS.sample(500, _gen(10))
    xT = dl.ddim_invert(model, LINEAR, x0, steps=250)
    assert not torch.allclose(xT, x0, atol=0.5)
    back = dl.ddim_sample(model, LINEAR, x0.shape, steps=250, xT=xT)
    err = (back - x0).abs().max().item()
    assert err < 0.05, err
    # The latents of data are ~N(0, I) (ab_T ~ 4e-5): 5 SE bands plus 5% for the discretization.
    eye = torch.eye(2, dtype=torch.float64)
    _assert_moments(xT, torch.zeros(2, dtype=torch.float64), eye, torch.randn(100_000, 2, generator=_gen(11)), bias=0.05)


def test_cosine_schedule_ddpm_recovers_the_gaussian_mean_and_variances():
    # The cosine schedule's last betas are large (clipped at 0.999), which stresses the
    # t -> 0 / t -> T-1 ends of the index convention differently from the linear one.
    cos = dl.cosine_schedule(T=1000)
    # (Closed form as in the module docstring: the bias is under 1% here.)
    x = dl.ddpm_sample(GAUSS.eps_model(cos), cos, (3000, 2), generator=_gen(12))
    ref, _ = GAUSS.sample(100_000, _gen(13))
    _assert_moments(x, MU, COV, ref, bias=0.01)


def test_float64_sampling_runs_in_float64():
    # A model in float64 with xT in float64 keeps float64 through the sampler.
    model = GAUSS.eps_model(LINEAR)
    xT = torch.randn(8, 2, generator=_gen(14), dtype=torch.float64)
    out = dl.ddim_sample(model, LINEAR, (8, 2), steps=10, xT=xT)
    assert out.dtype == torch.float64
    assert np.isfinite(out.numpy()).all()
