"""Exact likelihoods by the probability-flow ODE: against the exact log-density of a Gaussian mixture (oracle),
Hutchinson's estimate unbiased within its standard error, bits per dimension, Karras sigmas (EDM Eq. 5) in
closed form, and bad input for the continuous-time functions added with them."""
import math
import re

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


# ---- found by mutation testing (issue 17): exact values, the probe, messages, steps, the device ------------------
A = torch.tensor([[-0.3, 0.8], [0.5, 0.4]], dtype=torch.float64)      # a linear velocity field u(x, t) = A x
NARROW = dict(beta_min=0.1, beta_max=2.0, t_min=0.1)                    # sigma(1) = sqrt(1 - e^-1.05) = 0.81, t_min = 0.1


def _linear_field(x, t, cond=None):
    return x @ A.T.to(x.dtype)


def _rk4_linear(x, h, steps):
    """x after `steps` classical RK4 steps of size h on dx/dt = A x: x <- P x with P the RK4 polynomial of hA,
    I + hA + (hA)^2/2 + (hA)^3/6 + (hA)^4/24 (the method's stability function, exact for a linear ODE)."""
    hA = h * A
    P = torch.eye(2, dtype=torch.float64) + hA + hA @ hA / 2 + hA @ hA @ hA / 6 + hA @ hA @ hA @ hA / 24
    return x @ torch.linalg.matrix_power(P, steps).T


def _expected_log_p(x, steps, trace_term):
    """log p_0(x) = log N(x_1; 0, sigma(1)^2 I) + int_0.1^1 div u dt, written out for the NARROW VP path."""
    s1 = math.sqrt(1 - math.exp(-(0.1 + (2.0 - 0.1) / 2)))           # VP: log alpha(1) = -beta_min/2 - (beta_max - beta_min)/4
    x1 = _rk4_linear(x, 0.9 / steps, steps)
    log_prior = -0.5 * (x1 ** 2).sum(1) / s1 ** 2 - 2 * math.log(s1) - math.log(2 * math.pi)
    return log_prior + 0.9 * trace_term


def test_ode_log_likelihood_of_a_linear_field_is_rk4_and_the_prior_written_out():
    """u = A x (a velocity model on VP with t_min = 0.1, sigma(1) = 0.81): RK4 maps x to P^steps x exactly, the
    divergence is tr A at every time, so log p = log N(P^steps x; 0, sigma(1)^2 I) + 0.9 tr A, to 1e-12. Pins the
    prior (its sigma from the last time, 1/sigma^2, -D log sigma), the RK4 stages, the grid (float64, steps + 1
    points, ending at t_max) and a batch of one. Hutchinson with one Rademacher probe z per sample (drawn as the
    sign of x-shaped normal noise in x's dtype from the generator) gives 0.9 z^T A z instead of 0.9 tr A."""
    path = dl.vp_path(**NARROW)
    x = torch.randn(8, 2, generator=_gen(1), dtype=torch.float64)
    ll = dl.ode_log_likelihood(_linear_field, path, x, prediction="velocity", steps=3)
    expected = _expected_log_p(x, 3, float(A.trace()))
    torch.testing.assert_close(ll, expected, rtol=0, atol=1e-12)
    one = dl.ode_log_likelihood(_linear_field, path, x[:1], prediction="velocity", steps=3)
    torch.testing.assert_close(one, expected[:1], rtol=0, atol=1e-12)
    z = torch.randn(8, 2, generator=_gen(7), dtype=torch.float64).sign()
    hutch = dl.ode_log_likelihood(_linear_field, path, x, prediction="velocity", steps=3, divergence="hutchinson",
                                  generator=_gen(7))
    torch.testing.assert_close(hutch, _expected_log_p(x, 3, ((z @ A.T) * z).sum(1)), rtol=0, atol=1e-12)
    assert float((hutch - ll).abs().max()) > 0.1          # the probe matters for this A (off-diagonal 0.8, 0.5)


def test_ode_log_likelihood_checks_found_by_mutation():
    """Exact messages; cond reaches the model; a bad generator is refused even where no probe is drawn; the
    default is 100 RK4 steps (4 model calls each); log p comes back in x's dtype."""
    x = torch.zeros(3, 2, dtype=torch.float64)
    path = dl.vp_path(**NARROW)
    for pred in ("eps", "score"):
        msg = (f"prediction '{pred}' cannot give x0 where alpha(t) = 0 (t_max = 1.0); use a path with t_max < 1, "
               "e.g. linear_path(t_max=0.999), or an x0/v/velocity model")
        with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
            dl.ode_log_likelihood(_m, dl.linear_path(), x, prediction=pred, steps=1)
    with pytest.raises(ValueError, match=re.escape("cond must be None or an integer tensor of labels with shape (3,), got (2,)")):
        dl.ode_log_likelihood(_linear_field, path, x, prediction="velocity", steps=1, cond=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="^generator must be a torch.Generator or None, got int$"):
        dl.ode_log_likelihood(_linear_field, path, x, prediction="velocity", steps=1, generator=0)
    seen = []

    def spy(x, t, cond=None):
        seen.append(cond)
        return _linear_field(x, t)
    cond = torch.tensor([2, 0, 1])
    dl.ode_log_likelihood(spy, path, x, prediction="velocity", steps=1, cond=cond)
    assert len(seen) == 4 and all(c is cond for c in seen)
    seen.clear()
    dl.ode_log_likelihood(spy, path, x, prediction="velocity")
    assert len(seen) == 400
    # the result is in x's dtype: float16 data give float16 log p (a float32 log-determinant would promote it)
    assert dl.ode_log_likelihood(_linear_field, path, x.half(), prediction="velocity", steps=1).dtype == torch.float16
    with pytest.raises(ValueError, match=r"^log_likelihood must be finite, got 1 non-finite value\(s\) \(NaN or inf\) "
                                         r"in a tensor of shape \(2,\)$"):
        dl.bits_per_dim(torch.tensor([0.0, float("nan")]), 2)
    with pytest.raises(TypeError, match="^log_likelihood must be a torch.Tensor, got list$"):
        dl.bits_per_dim([0.0], 2)


@pytest.mark.parametrize("bad_call, step, t", [(6, 1, 0.775), (7, 1, 0.775), (8, 1, 1.0)])
def test_a_broken_model_inside_an_rk4_step_is_named_with_that_step(bad_call, step, t):
    """Steps 0.1 -> 0.55 -> 1 (2 steps): calls 5-8 are step 1's stages k1 (t = 0.55), k2 and k3 (the midpoint
    0.775) and k4 (t = 1); a NaN in any stage names step 1 and its time."""
    calls = []

    def broken(x, t, cond=None):
        calls.append(t)
        out = _linear_field(x, t)
        return out * float("nan") if len(calls) == bad_call else out
    with pytest.raises(ValueError, match=rf"^model output at step {step} \(t = {t:g}\) is not finite"):
        dl.ode_log_likelihood(broken, dl.vp_path(**NARROW), torch.zeros(2, 2, dtype=torch.float64),
                              prediction="velocity", steps=2)


def test_ode_log_likelihood_on_a_device_gives_the_cpu_numbers():
    """On the simulated accelerator of test_device_discipline.py (float32, exact divergence and Hutchinson with a CPU
    generator): the log-determinant and the probe live on the device (a CPU one is refused there, as on CUDA), no
    float64 reaches it, the syncs do not grow with the steps, and the numbers are the CPU run's."""
    from test_device_discipline import FAKE, _check, _ct_net, to_host
    x = torch.randn(4, 2, generator=_gen(2))
    for kw in (dict(), dict(divergence="hutchinson")):
        def run(n, dev):
            def go():
                g = _gen(3) if kw else None
                return dl.ode_log_likelihood(_ct_net().to(dev), dl.vp_path(), x.to(dev), steps=n, generator=g, **kw)
            return go
        out, _ = _check(f"ode_log_likelihood {kw}", run(2, FAKE), run(4, FAKE))
        torch.testing.assert_close(to_host(out), run(4, "cpu")(), rtol=0, atol=0)
