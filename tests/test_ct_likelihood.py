"""Exact likelihoods by the probability-flow ODE: against the exact log-density of a Gaussian mixture (oracle),
Hutchinson's estimate unbiased within its standard error, bits per dimension, Karras sigmas (EDM Eq. 5) in
closed form, and bad input for the continuous-time functions added with them."""
import math

import pytest
import torch

import diffusion_lab as dl

RING = dl.ring_mixture()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def points():
    return RING.sample(200, _gen(5))[0].double()


@pytest.mark.parametrize("name, pred", [("vp", "eps"), ("linear", "velocity")])
def test_ode_log_likelihood_equals_the_exact_log_density(points, name, pred):
    """2-D ring of 8 Gaussians, 200 points, exact divergence, RK4 with 50 steps: mean absolute error < 0.05
    nats against the mixture's exact log p_0 (measured 0.011 on VP, where t_min = 1e-3 leaves the data blurred
    by sigma = 0.01, and 2e-4 on the linear path). A divergence with the wrong sign is off by ~2x log p."""
    path = {"vp": dl.vp_path(), "linear": dl.linear_path()}[name]
    ll = dl.ode_log_likelihood(RING.path_model(path, pred), path, points, prediction=pred, steps=50)
    assert ll.shape == (200,)
    assert float((ll - RING.log_prob(points)).abs().mean()) < 0.05


def test_hutchinson_is_unbiased_within_its_standard_error(points):
    """One Rademacher probe per point for the whole solve: the estimate minus the exact-divergence result has
    mean 0 within 3 standard errors (measured -0.011 with SE 0.077), and it does vary (SE > 0.01). A Gaussian
    probe scaled by 1.5 would add (1.5^2 - 1) div u: a bias of ~20 nats."""
    path = dl.linear_path()
    model = RING.path_model(path, "velocity")
    exact = dl.ode_log_likelihood(model, path, points, prediction="velocity", steps=50)
    hutch = dl.ode_log_likelihood(model, path, points, prediction="velocity", steps=50, divergence="hutchinson",
                                  generator=_gen(0))
    d = hutch - exact
    se = float(d.std() / math.sqrt(d.numel()))
    assert se > 0.01 and abs(float(d.mean())) < 3 * se, (float(d.mean()), se)


def test_gaussian_likelihood_in_closed_form():
    """Data N(m, c^2 I) in 3-D on VP with an x0-model: log p equals the closed-form log-density of x_{t_min},
    N(alpha m, alpha^2 c^2 + sigma^2) at t_min, within 0.03 nats per point (measured max 0.017, mean ~0.004: the
    prior N(0, sigma(1)^2) neglects alpha(1) m = 6.7e-3 m). A divergence term with the wrong sign or a missing
    factor is off by nats."""
    gm = dl.GaussianMixture([[0.7, -0.7, 0.2]], stds=0.5)
    path = dl.vp_path()
    x = gm.sample(50, _gen(3))[0].double()
    ll = dl.ode_log_likelihood(gm.path_model(path, "x0"), path, x, prediction="x0", steps=60)
    exact = gm.path_log_prob(x, path.t_min, path)                      # log p_{t_min}(x), closed form
    assert float((ll - exact).abs().max()) < 3e-2


def test_bits_per_dim():
    ll = torch.tensor([-2 * math.log(2) * 3.0, 0.0])
    torch.testing.assert_close(dl.bits_per_dim(ll, 2), torch.tensor([3.0, 0.0]))


def test_karras_sigmas_follow_edm_eq_5():
    """sigma_i^(1/rho) is linear in i from sigma_max^(1/rho) to sigma_min^(1/rho) (Karras et al. 2022, Eq. 5);
    EDM's CIFAR-10 setting (n = 18) starts at 80 and ends at 0.002; sigma_9 against the formula written out."""
    s = dl.karras_sigmas(18)
    assert s.dtype == torch.float64 and s.shape == (18,) and bool((s[1:] < s[:-1]).all())
    assert abs(float(s[0]) - 80.0) < 1e-12 and abs(float(s[-1]) - 0.002) < 1e-15
    hand = (80 ** (1 / 7) + 9 / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert abs(float(s[9]) - hand) < 1e-12
    root = s ** (1 / 7)
    torch.testing.assert_close(root[1:] - root[:-1], (root[1] - root[0]).expand(17), rtol=1e-10, atol=0)
    assert dl.karras_sigmas(1).tolist() == [80.0]


def _m(x, t, cond=None):
    return torch.zeros_like(x)


S = dl.linear_schedule()


@pytest.mark.parametrize("call, match", [
    (lambda: dl.karras_sigmas(0), r"n must be an integer in \[1, inf\], got 0"),
    (lambda: dl.karras_sigmas(5, sigma_min=2.0, sigma_max=1.0), r"sigma_min must be smaller than sigma_max, got sigma_min = 2.0"),
    (lambda: dl.karras_sigmas(5, rho=0.0), r"rho must be in \(0, inf\], got 0.0"),
    (lambda: dl.karras_sigmas(5, sigma_min=-1.0), r"sigma_min must be in \(0, inf\], got -1.0"),
    (lambda: dl.sde_sample(_m, dl.vp_path(), (4, 2), steps=0), r"steps must be an integer in \[1, inf\], got 0"),
    (lambda: dl.sde_sample(_m, dl.vp_path(), (4, 2), prediction="flow"), r"prediction must be one of \('eps', 'x0', 'v', 'score', 'velocity'\), got 'flow'"),
    (lambda: dl.sde_sample(_m, dl.vp_path(), (4, 2), x_T=torch.zeros(4, 3)), r"x_T must have shape \(4, 2\), got \(4, 3\)"),
    (lambda: dl.dpm_solver_sample(_m, S, (4, 2), steps=0), r"steps must be an integer in \[1, 1000\], got 0"),
    (lambda: dl.dpm_solver_sample(_m, S, (4, 2), x_T=torch.full((4, 2), float("inf"))), r"x_T must be finite"),
    (lambda: dl.dpm_solver_sample(lambda x, t, c=None: x[:, :1], S, (4, 2)), r"model output at step 0 \(t = 999\) must have shape \(4, 2\), got \(4, 1\)"),
    (lambda: dl.dpm_solver_sample(lambda x, t, c=None: x * float("nan"), S, (4, 2)), r"model output at step 0 \(t = 999\) is not finite"),
    (lambda: dl.dpm_solver_sample(_m, "linear", (4, 2)), r"schedule"),
    (lambda: dl.edm_sample(_m, dl.vp_path(), (4, 2), [1.0, 2.0]), r"sigmas must be positive and strictly decreasing"),
    (lambda: dl.edm_sample(_m, dl.vp_path(), (4, 2), [500.0, 1.0]), r"r must be in this path's range \[0.01049, 152.2\].*got 1 to 500"),
    (lambda: dl.edm_sample(_m, dl.ve_path(), (4, 2), [40.0, 1.0], churn=50.0), r"churn = 50.0 raises the noise level to 56.57"),
    (lambda: dl.edm_sample(_m, dl.vp_path(), (4, 2), [5.0, 1.0], method="rk4"), r"method must be one of \('heun', 'euler'\), got 'rk4'"),
    (lambda: dl.karras_sigmas(5, sigma_min=1.0, sigma_max=1.0), r"^sigma_min must be smaller than sigma_max, got sigma_min = 1.0"),
    (lambda: dl.edm_sample(_m, dl.vp_path(), (4, 2), [5.0, 1.0], churn=-1.0), r"^churn must be in \[0, inf\], got -1.0$"),
    (lambda: dl.edm_sample(_m, dl.vp_path(), (4, 2), [5.0, 1.0], churn=1.0, s_noise=-0.5), r"^s_noise must be in \[0, inf\], got -0.5$"),
    (lambda: dl.edm_sample(lambda x, t, c=None: x * float("nan"), dl.vp_path(), (4, 2), [5.0, 1.0]), r"model output at step 0 \(t = 0.5672\) is not finite"),
    (lambda: dl.ode_log_likelihood(_m, dl.vp_path(), torch.zeros(4, 2), divergence="skilling"), r"divergence must be one of \('exact', 'hutchinson'\), got 'skilling'"),
    (lambda: dl.ode_log_likelihood(_m, dl.vp_path(), torch.zeros(4, 2), steps=0), r"steps must be an integer in \[1, inf\], got 0"),
    (lambda: dl.ode_log_likelihood(_m, dl.vp_path(), torch.full((4, 2), float("nan"))), r"x must be finite"),
    (lambda: dl.ode_log_likelihood(_m, dl.vp_path(), torch.zeros(4, 2), prediction="noise"), r"prediction must be one of"),
    (lambda: dl.ode_log_likelihood(lambda x, t, c=None: x * float("nan"), dl.vp_path(), torch.zeros(4, 2)), r"model output at step 0 \(t = 0.001\) is not finite"),
    (lambda: dl.bits_per_dim(torch.zeros(3), 0), r"num_dims must be an integer in \[1, inf\], got 0"),
    (lambda: dl.discrete_model(_m, "linear"), r"schedule must be a diffusion_lab Schedule, got str"),
    (lambda: dl.discrete_model(_m, S)(torch.zeros(2, 2), torch.tensor([0.5, 1.5])), r"t must be in \[0, 1\].*1.5"),
])
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
