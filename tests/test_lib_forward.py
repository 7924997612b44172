"""The forward process: closed-form q(x_t | x_0) against iterating the chain, the posterior
q(x_{t-1} | x_t, x_0) against brute-force Bayes on a grid and the product of Gaussians, and bad input."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

import diffusion_lab as dl

# Large betas: every step moves the distribution a lot, so an off-by-one index is visible.
BIG = dl.linear_schedule(T=10, beta_start=0.05, beta_end=0.4)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------
# q(x_t | x_0)
# ---------------------------------------------------------------------------------------
def test_q_sample_formula_int_and_tensor_t():
    s = dl.linear_schedule()
    g = _gen(0)
    x0 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(4, 3, generator=g, dtype=torch.float64)
    ab = s.alpha_bars
    out = dl.q_sample(s, x0, 500, noise)
    torch.testing.assert_close(out, ab[500].sqrt() * x0 + (1 - ab[500]).sqrt() * noise)
    # One timestep per row: every row must use its own alpha_bar.
    t = torch.tensor([0, 1, 500, 999])
    out = dl.q_sample(s, x0, t, noise)
    for i in range(4):
        torch.testing.assert_close(out[i], ab[t[i]].sqrt() * x0[i] + (1 - ab[t[i]]).sqrt() * noise[i])
    # Image-shaped input (B, C, H, W).
    x0 = torch.randn(3, 1, 4, 4, generator=g)
    noise = torch.randn(3, 1, 4, 4, generator=g)
    out = dl.q_sample(s, x0, torch.tensor([5, 50, 900]), noise)
    assert out.shape == x0.shape and out.dtype == torch.float32
    torch.testing.assert_close(out[1], (ab[50].sqrt() * x0[1] + (1 - ab[50]).sqrt() * noise[1]).float())


def test_q_sample_moments_equal_the_chain_recursion_exactly():
    # Iterating x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) z from x_{-1} = x0 gives
    # mean m_t = sqrt(alpha_t) m_{t-1} and variance v_t = alpha_t v_{t-1} + beta_t, deterministic.
    x0 = 1.7
    m, v = x0, 0.0
    one = torch.ones(1, dtype=torch.float64)
    for t in range(BIG.T):
        a = 1 - float(BIG.betas[t])
        m, v = math.sqrt(a) * m, a * v + float(BIG.betas[t])
        # q_sample is affine in the noise: its value at noise 0 is the mean, its slope the std.
        mean = dl.q_sample(BIG, x0 * one, t, 0 * one).item()
        std = dl.q_sample(BIG, x0 * one, t, one).item() - mean
        assert mean == pytest.approx(m, rel=1e-12), t
        assert std ** 2 == pytest.approx(v, rel=1e-12), t


@pytest.mark.parametrize("t", [0, 3, 9])
def test_q_sample_matches_iterating_the_chain_in_distribution(t):
    # n draws by running the chain step by step vs n draws of the closed form. Mean SE is
    # sqrt(v / n), variance SE v sqrt(2 / n): 5 SE bands. The two-sample KS test compares the
    # whole distributions; with fixed seeds its p-value is deterministic.
    n = 20_000
    g = _gen(100 + t)
    x0 = torch.full((n,), -1.2, dtype=torch.float64)
    x = x0.clone()
    for s in range(t + 1):
        x = (1 - BIG.betas[s]).sqrt() * x + BIG.betas[s].sqrt() * torch.randn(n, generator=g, dtype=torch.float64)
    closed = dl.q_sample(BIG, x0, t, torch.randn(n, generator=g, dtype=torch.float64))
    ab = float(BIG.alpha_bars[t])
    mean, var = math.sqrt(ab) * -1.2, 1 - ab
    for name, sample in (("chain", x), ("closed form", closed)):
        assert abs(sample.mean().item() - mean) < 5 * math.sqrt(var / n), name
        assert abs(sample.var().item() - var) < 5 * var * math.sqrt(2 / n), name
    assert stats.ks_2samp(x.numpy(), closed.numpy()).pvalue > 1e-3


def test_predict_x0_inverts_q_sample():
    s = dl.cosine_schedule(T=100)
    g = _gen(1)
    x0 = torch.randn(5, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(5, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 50, 90, 99])
    xt = dl.q_sample(s, x0, t, noise)
    torch.testing.assert_close(dl.predict_x0(s, xt, noise, t), x0)
    torch.testing.assert_close(dl.predict_x0(s, xt[:1], noise[:1], 0), x0[:1])


# ---------------------------------------------------------------------------------------
# q(x_{t-1} | x_t, x_0)
# ---------------------------------------------------------------------------------------
def _bayes_on_grid(schedule, x0, xt, t):
    # p(x_{t-1} | x_t, x_0) is proportional to q(x_t | x_{t-1}) q(x_{t-1} | x_0); evaluate the
    # product on a fine grid spanning both factors' peaks, normalize, and take the moments.
    ab_prev = float(schedule.alpha_bars[t - 1])
    beta = float(schedule.betas[t])
    prior_mean, prior_std = math.sqrt(ab_prev) * x0, math.sqrt(1 - ab_prev)
    like_peak, like_std = xt / math.sqrt(1 - beta), math.sqrt(beta / (1 - beta))
    pad = 12 * max(prior_std, like_std)
    grid = np.linspace(min(prior_mean, like_peak) - pad, max(prior_mean, like_peak) + pad, 400_001)
    log_w = stats.norm.logpdf(xt, math.sqrt(1 - beta) * grid, math.sqrt(beta)) + stats.norm.logpdf(grid, prior_mean, prior_std)
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    mean = (w * grid).sum()
    return mean, (w * (grid - mean) ** 2).sum()


@pytest.mark.parametrize("schedule, t", [(BIG, 1), (BIG, 5), (BIG, 9), (dl.linear_schedule(), 1), (dl.linear_schedule(), 600),
                                         (dl.cosine_schedule(T=50), 25)])
def test_q_posterior_matches_brute_force_bayes(schedule, t):
    x0, xt = 0.8, -0.4
    one = torch.ones(1, dtype=torch.float64)
    mean, var = dl.q_posterior(schedule, x0 * one, xt * one, t)
    ref_mean, ref_var = _bayes_on_grid(schedule, x0, xt, t)
    # The grid step is under 1e-3 posterior stds; the Riemann sums are accurate to ~1e-9 relative.
    assert mean.item() == pytest.approx(ref_mean, rel=1e-6, abs=1e-9)
    assert float(var) == pytest.approx(ref_var, rel=1e-6)


def test_q_posterior_matches_product_of_gaussians_per_row():
    # Posterior precision = 1 / (1 - ab_{t-1}) + alpha_t / beta_t and
    # mean = var (sqrt(ab_{t-1}) x0 / (1 - ab_{t-1}) + sqrt(alpha_t) x_t / beta_t).
    s = dl.linear_schedule(T=200, beta_start=1e-3, beta_end=0.05)
    g = _gen(2)
    x0 = torch.randn(6, 3, generator=g, dtype=torch.float64)
    xt = torch.randn(6, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 2, 50, 100, 150, 199])
    mean, var = dl.q_posterior(s, x0, xt, t)
    for i, ti in enumerate(t.tolist()):
        ab_prev, beta = s.alpha_bars[ti - 1], s.betas[ti]
        post_var = 1 / (1 / (1 - ab_prev) + (1 - beta) / beta)
        post_mean = post_var * (ab_prev.sqrt() * x0[i] / (1 - ab_prev) + (1 - beta).sqrt() * xt[i] / beta)
        torch.testing.assert_close(mean[i], post_mean)
        torch.testing.assert_close(torch.broadcast_to(var, mean.shape)[i], post_var.expand(3))
    assert torch.broadcast_shapes(var.shape, mean.shape) == mean.shape


def test_q_posterior_variance_is_beta_tilde_and_mean_is_consistent_with_sampling():
    # Sample x_{t-1} ~ q(x_{t-1} | x0) then x_t ~ q(x_t | x_{t-1}); among the joint draws, the
    # residual x_{t-1} - mean(x0, x_t) must be independent of x_t with variance beta_tilde_t.
    n, t = 50_000, 4
    g = _gen(3)
    x0 = torch.full((n,), 0.5, dtype=torch.float64)
    x_prev = dl.q_sample(BIG, x0, t - 1, torch.randn(n, generator=g, dtype=torch.float64))
    xt = (1 - BIG.betas[t]).sqrt() * x_prev + BIG.betas[t].sqrt() * torch.randn(n, generator=g, dtype=torch.float64)
    mean, var = dl.q_posterior(BIG, x0, xt, t)
    r = x_prev - mean
    bt = float(BIG.posterior_variances[t])
    assert float(var) == pytest.approx(bt, rel=1e-12)
    # 5 SE bands: residual mean SE sqrt(bt / n), variance SE bt sqrt(2 / n), correlation SE 1 / sqrt(n).
    assert abs(r.mean().item()) < 5 * math.sqrt(bt / n)
    assert abs(r.var().item() - bt) < 5 * bt * math.sqrt(2 / n)
    assert abs(np.corrcoef(r.numpy(), xt.numpy())[0, 1]) < 5 / math.sqrt(n)


def _ab_by_hand(betas, t):
    # alpha_bar_t = prod_{s <= t} (1 - beta_s) as a Python product, independent of Schedule's cumprod;
    # alpha_bar_{-1} = 1.
    return math.prod(1.0 - b for b in betas[: t + 1])


@pytest.mark.parametrize("t", [0, 1, 17, 29])
def test_posterior_coefficients_are_eq_7_written_out(t):
    # Ho et al. 2020, Eq. 7: mu_tilde = sqrt(ab_{t-1}) beta_t / (1 - ab_t) x0
    #                                 + sqrt(alpha_t) (1 - ab_{t-1}) / (1 - ab_t) x_t,
    # beta_tilde_t = (1 - ab_{t-1}) / (1 - ab_t) beta_t; at t = 0 (ab_{-1} = 1): (1, 0, 0).
    # Catches an index shift (ab_t for ab_{t-1}), a missing square root, a swapped c0/ct.
    s = dl.linear_schedule(T=30, beta_start=0.01, beta_end=0.3)
    betas = [0.01 + (0.3 - 0.01) * k / 29 for k in range(30)]
    ab, ab_prev, beta = _ab_by_hand(betas, t), _ab_by_hand(betas, t - 1), betas[t]
    like = torch.zeros(1, 4, dtype=torch.float64)
    c0, ct, var = dl.posterior_coefficients(s, t, like)
    assert float(c0) == pytest.approx(math.sqrt(ab_prev) * beta / (1 - ab), rel=1e-12)
    assert float(ct) == pytest.approx(math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab), rel=1e-12, abs=1e-15)
    assert float(var) == pytest.approx((1 - ab_prev) / (1 - ab) * beta, rel=1e-12, abs=1e-15)
    if t == 0:  # no noise before the first step: x_{-1} is x0 itself
        assert float(c0) == pytest.approx(1.0, rel=1e-12) and (float(ct), float(var)) == (0.0, 0.0)


def test_posterior_coefficients_per_row_shape_and_dtype():
    # Tensor t gathers one coefficient per row, shaped (B, 1, ...) to broadcast against `like`,
    # in like's dtype; the values are Eq. 7 written out as above.
    s = dl.linear_schedule(T=30, beta_start=0.01, beta_end=0.3)
    betas = [0.01 + (0.3 - 0.01) * k / 29 for k in range(30)]
    t = torch.tensor([3, 0, 29])
    like = torch.zeros(3, 2, 5)
    c0, ct, var = dl.posterior_coefficients(s, t, like)
    for c in (c0, ct, var):
        assert c.shape == (3, 1, 1) and c.dtype == torch.float32
    for i, ti in enumerate(t.tolist()):
        ab, ab_prev = _ab_by_hand(betas, ti), _ab_by_hand(betas, ti - 1)
        assert float(c0[i]) == pytest.approx(math.sqrt(ab_prev) * betas[ti] / (1 - ab), rel=1e-6)
        assert float(ct[i]) == pytest.approx(math.sqrt(1 - betas[ti]) * (1 - ab_prev) / (1 - ab), rel=1e-6, abs=1e-12)
        assert float(var[i]) == pytest.approx((1 - ab_prev) / (1 - ab) * betas[ti], rel=1e-6, abs=1e-12)


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------
S = dl.linear_schedule(T=10, beta_start=0.01, beta_end=0.2)
X = torch.zeros(2, 3)
NAN = torch.tensor([[0.0, float("nan"), 0.0], [0.0, 0.0, 0.0]])


@pytest.mark.parametrize("t", [-1, 10, 100, torch.tensor([0, 10]), torch.tensor([-1, 3])])
def test_q_sample_t_out_of_range(t):
    with pytest.raises(ValueError, match=r"^t\b"):
        dl.q_sample(S, X, t, X)


@pytest.mark.parametrize("t", [1.5, torch.tensor([1.0, 2.0]), "3", None])
def test_q_sample_t_wrong_type(t):
    with pytest.raises(TypeError, match=r"^t\b"):
        dl.q_sample(S, X, t, X)


def test_q_sample_t_wrong_batch_size():
    with pytest.raises(ValueError, match=r"^t\b"):
        dl.q_sample(S, X, torch.tensor([1, 2, 3]), X)
    with pytest.raises(ValueError, match=r"^t\b"):
        dl.q_sample(S, X, torch.tensor([[1, 2]]), X)


def test_q_sample_other_bad_input():
    with pytest.raises(ValueError, match=r"^noise\b"):
        dl.q_sample(S, X, 1, torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"^x0\b"):
        dl.q_sample(S, NAN, 1, X)
    with pytest.raises(ValueError, match=r"^noise\b"):
        dl.q_sample(S, X, 1, NAN)
    with pytest.raises(TypeError, match=r"^x0\b"):
        dl.q_sample(S, [[0.0]], 1, X)
    with pytest.raises(TypeError, match=r"^schedule\b"):
        dl.q_sample("linear", X, 1, X)


@pytest.mark.parametrize("t", [0, -1, 10, torch.tensor([0, 3])])
def test_q_posterior_t_out_of_range_including_zero(t):
    with pytest.raises(ValueError, match=r"^t\b"):
        dl.q_posterior(S, X, X, t)


def test_q_posterior_other_bad_input():
    with pytest.raises(ValueError, match=r"^xt\b"):
        dl.q_posterior(S, X, torch.zeros(3, 2), 1)
    with pytest.raises(ValueError, match=r"^xt\b"):
        dl.q_posterior(S, X, NAN, 1)
    with pytest.raises(ValueError, match=r"^x0\b"):
        dl.q_posterior(S, NAN, X, 1)
    with pytest.raises(TypeError, match=r"^schedule\b"):
        dl.q_posterior(None, X, X, 1)
    with pytest.raises(TypeError, match=r"^t\b"):
        dl.q_posterior(S, X, X, 2.0)


def test_predict_x0_bad_input():
    with pytest.raises(ValueError, match=r"^eps\b"):
        dl.predict_x0(S, X, torch.zeros(2, 2), 1)
    with pytest.raises(ValueError, match=r"^xt\b"):
        dl.predict_x0(S, NAN, X, 1)
    with pytest.raises(ValueError, match=r"^t\b"):
        dl.predict_x0(S, X, X, 10)
    with pytest.raises(TypeError, match=r"^schedule\b"):
        dl.predict_x0(0, X, X, 1)


def test_posterior_coefficients_bad_input():
    with pytest.raises(ValueError, match=r"^t\b"):
        dl.posterior_coefficients(S, 10, X)
    with pytest.raises(TypeError, match=r"^schedule\b"):
        dl.posterior_coefficients("linear", 1, X)


def test_q_posterior_float32_is_as_accurate_as_float32_allows():
    # As for ddpm_step: 1 - alpha_bar_t must not be formed in float32 at small t (it is ~1e-4
    # and the coefficients divide by it). Coefficients formed in float64 and cast once give
    # ~1e-6 error for unit-scale inputs; 5e-5 is a wide margin.
    s = dl.linear_schedule()
    g = _gen(20)
    x0, xt = (torch.randn(1000, 3, generator=g) for _ in range(2))
    for t in (1, 2, 5, 50):
        m32, v32 = dl.q_posterior(s, x0, xt, t)
        m64, v64 = dl.q_posterior(s, x0.double(), xt.double(), t)
        err = (m32.double() - m64).abs().max().item()
        assert err < 5e-5, f"t = {t}: float32 posterior mean off by {err:.2e}"
        assert float(v32) == pytest.approx(float(v64), rel=1e-5)


def test_forward_bad_input_messages_are_exact():
    # found by mutation testing: the messages name the argument, its value and what is allowed
    x = torch.zeros(2, 3)
    with pytest.raises(TypeError, match=r"^schedule must be a diffusion_lab Schedule, got str$"):
        dl.q_sample("linear", x, 1, x)
    with pytest.raises(ValueError, match=r"^t must be an int or have shape \(B,\) = \(2,\), got \(3,\)$"):
        dl.q_sample(S, x, torch.tensor([1, 2, 3]), x)
    with pytest.raises(ValueError, match=r"^t must be an int or a 1-D tensor of shape \(B,\), got shape \(2, 1\)$"):
        dl.q_sample(S, x, torch.tensor([[1], [2]]), x)
    with pytest.raises(ValueError, match=r"^eps must be finite"):
        dl.predict_x0(S, x, torch.full((2, 3), float("nan")), 1)
