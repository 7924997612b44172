"""Time grids (grids.sampling_times), ode_solve in both directions (DDIM = method "ddim"; inversion), and the
objectives module (eps-loss weights over log-SNR, EDM preconditioning, path_loss, train_path_model)."""
import math
import re

import pytest
import torch

import diffusion_lab as dl
from diffusion_lab.ode import time_grid

PATHS = [dl.vp_path(), dl.ve_path(), dl.linear_path(t_max=0.999), dl.schedule_path(dl.linear_schedule(1000))]


# ---- sampling_times -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS, ids=["vp", "ve", "linear", "schedule"])
@pytest.mark.parametrize("spacing", dl.SPACINGS)
def test_sampling_times_shape_and_ends(path, spacing):
    if path.t_min == 0 and spacing in ("log_snr", "karras"):
        pytest.skip("no finite log-SNR at t_min = 0: test_log_snr_spacing_needs_finite_ratio")
    ts = dl.sampling_times(path, 7, spacing)
    assert len(ts) == 8 and ts[0] == path.t_max and ts[-1] == 0.0
    assert all(b < a for a, b in zip(ts[:-1], ts[1:]))
    if path.t_min > 0:
        assert ts[-2] == path.t_min
    assert dl.sampling_times(path, 1, spacing) == [path.t_max, 0.0]


@pytest.mark.parametrize("path", PATHS + [dl.linear_path()], ids=["vp", "ve", "linear", "schedule", "linear1"])
def test_uniform_is_time_grid_and_quadratic_closed_form(path):
    assert dl.sampling_times(path, 9) == time_grid(path, 9)           # bit for bit: the samplers' default unchanged
    q = torch.tensor(dl.sampling_times(path, 9, "quadratic"), dtype=torch.float64)
    n = 9 if path.t_min > 0 else 10
    u = torch.linspace(1, 0, n, dtype=torch.float64)
    torch.testing.assert_close(q[:n], path.t_min + (path.t_max - path.t_min) * u ** 2, rtol=0, atol=1e-15)


@pytest.mark.parametrize("path", [PATHS[0], PATHS[1], PATHS[3]], ids=["vp", "ve", "schedule"])
def test_log_snr_spacing_is_uniform_in_log_snr(path):
    ts = torch.tensor(dl.sampling_times(path, 12, "log_snr")[:-1], dtype=torch.float64)
    lam = path.log_snr(ts)
    d = lam[1:] - lam[:-1]
    assert float(d.min()) > 0
    assert float((d - d.mean()).abs().max()) < 1e-6 * float(d.mean())     # a quadratic spacing: 100% off


def test_karras_spacing_matches_karras_sigmas():
    """The noise levels sigma/alpha of the grid are EDM's Eq. 5 (dl.karras_sigmas, written independently)."""
    for path, rho in [(dl.vp_path(), 7.0), (dl.ve_path(), 3.0), (dl.schedule_path(dl.linear_schedule(1000)), 7.0)]:
        ts = torch.tensor(dl.sampling_times(path, 10, "karras", rho=rho)[:-1], dtype=torch.float64)
        r = path.sigma(ts) / path.alpha(ts)
        ref = dl.karras_sigmas(10, float(r[-1]), float(r[0]), rho=rho)
        torch.testing.assert_close(r, ref, rtol=1e-9, atol=0)


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, r"steps must be an integer in \[1, inf\], got 0"),
    ({"steps": 5, "spacing": "cosine"}, r"spacing must be one of \('uniform', 'quadratic', 'log_snr', 'karras'\), got 'cosine'"),
    ({"steps": 5, "spacing": "karras", "rho": 0.0}, r"rho must be in \(0, inf\], got 0.0"),
])
def test_sampling_times_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dl.sampling_times(dl.vp_path(), **kwargs)


@pytest.mark.parametrize("spacing", ["log_snr", "karras"])
@pytest.mark.parametrize("path", [dl.linear_path(), dl.linear_path(t_max=0.999)], ids=["alpha0", "sigma0"])
def test_log_snr_spacing_needs_finite_ratio(spacing, path):
    with pytest.raises(ValueError, match=rf"spacing '{spacing}' needs a finite, positive sigma/alpha"):
        dl.sampling_times(path, 5, spacing)


def test_ode_sample_spacing():
    mix = dl.ring_mixture()
    path = dl.vp_path()
    m = mix.path_model(path, "eps")
    xT = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    a = dl.ode_sample(m, path, (32, 2), steps=6, method="heun", x_T=xT)
    b = dl.ode_sample(m, path, (32, 2), steps=6, method="heun", x_T=xT, spacing="uniform")
    assert torch.equal(a, b)
    c = dl.ode_sample(m, path, (32, 2), steps=6, method="heun", x_T=xT, spacing="log_snr")
    d = dl.ode_solve(m, path, xT, dl.sampling_times(path, 6, "log_snr"), method="heun")
    assert torch.equal(c, d) and not torch.allclose(a, c, atol=1e-3)


# ---- ode_solve --------------------------------------------------------------------------------------------------
def test_ode_solve_ddim_is_ddim_sample():
    """Method "ddim" on the schedule's own path, at the DDIM timesteps, is ddim_sample (eta = 0) step for step."""
    s = dl.linear_schedule(1000)
    path = dl.schedule_path(s)
    eps_model = dl.ring_mixture().eps_model(s)
    xT = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    steps = dl.ddim_timesteps(1000, 10)
    ts = [float(path.timestep(n)) for n in steps] + [0.0]
    ours = dl.ode_solve(dl.discrete_model(eps_model, s), path, xT, ts, method="ddim")
    ref = dl.ddim_sample(eps_model, s, (64, 2), steps=10, xT=xT)
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-5)
    euler = dl.ode_solve(dl.discrete_model(eps_model, s), path, xT, ts, method="euler")
    assert float((euler - ref).abs().max()) > 1e-2               # a plain Euler step in t is a different method


@pytest.mark.parametrize("method, steps, tol", [("rk4", 40, 1e-4), ("dpm++2m", 80, 3e-3), ("ddim", 80, 0.1)])
def test_ode_solve_round_trip(method, steps, tol):
    """Inversion (increasing times) then sampling (decreasing) returns the start, to the solver's accuracy; and the
    error shrinks with more steps. Exact oracle of a smooth mixture, float64."""
    mix = dl.GaussianMixture([[-1.0, 0.0], [1.0, 0.5]], stds=[0.3, 0.5])
    path = dl.vp_path()
    m = mix.path_model(path, "eps")
    x = mix.sample(16, torch.Generator().manual_seed(2))[0].double()

    def err(n):
        ts = dl.sampling_times(path, n, "log_snr")[:-1]
        back = dl.ode_solve(m, path, dl.ode_solve(m, path, x, ts[::-1], method=method), ts, method=method)
        return float((back - x).norm(dim=1).max())
    e1, e2 = err(steps // 4), err(steps)
    assert e2 < tol and e2 < e1 / 3, (e1, e2)


@pytest.mark.parametrize("times, match", [
    ([0.5], r"times must be at least two strictly increasing or decreasing numbers in \[0, 1\]"),
    ([0.5, 0.2, 0.3], r"times must be at least two strictly increasing"),
    ([1.5, 0.5], r"times must be at least two strictly increasing"),
    ([0.0, 0.5], r"an increasing grid must start where sigma > 0, got times\[0\] = 0.0"),
])
def test_ode_solve_bad_times(times, match):
    m = dl.ring_mixture().path_model(dl.vp_path(), "eps")
    with pytest.raises(ValueError, match=match):
        dl.ode_solve(m, dl.vp_path(), torch.zeros(4, 2), times)


def test_ode_solve_bad_method_and_alpha_zero():
    m = dl.ring_mixture().path_model(dl.linear_path(), "eps")
    with pytest.raises(ValueError, match=r"method must be one of .* got 'midpoint'"):
        dl.ode_solve(m, dl.linear_path(), torch.zeros(4, 2), [1.0, 0.0], method="midpoint")
    with pytest.raises(ValueError, match=r"prediction 'eps' cannot give x0 where alpha\(t\) = 0 \(t = 1.0\)"):
        dl.ode_solve(m, dl.linear_path(), torch.zeros(4, 2), [1.0, 0.0])


# ---- objectives ---------------------------------------------------------------------------------------------------
def test_eps_loss_weight_closed_forms():
    vp = dl.vp_path()
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    lam, w_eps = dl.eps_loss_weight(vp, "eps", t)
    # the density of lambda under t ~ U(t_min, 1), by a central difference of path.log_snr (independent of d_alpha)
    h = 1e-6
    dlam = (vp.log_snr(t + h) - vp.log_snr(t - h)) / (2 * h)
    torch.testing.assert_close(w_eps, 1 / (dlam.abs() * (1 - vp.t_min)), rtol=1e-6, atol=0)
    torch.testing.assert_close(lam, vp.log_snr(t), rtol=1e-12, atol=1e-12)
    # x0-prediction weighs the eps-loss by sigma^2/alpha^2 = exp(-lambda); v (VP) by 1/alpha^2 = 1 + exp(-lambda)
    torch.testing.assert_close(dl.eps_loss_weight(vp, "x0", t)[1] / w_eps, torch.exp(-lam), rtol=1e-10, atol=0)
    torch.testing.assert_close(dl.eps_loss_weight(vp, "v", t)[1] / w_eps, 1 + torch.exp(-lam), rtol=1e-10, atol=0)
    torch.testing.assert_close(dl.eps_loss_weight(vp, "score", t)[1] / w_eps, 1 / vp.sigma(t) ** 2, rtol=1e-10, atol=0)
    # flow matching (linear path, velocity target, t ~ U(0, 1)): w = exp(-lambda / 2) / 2 (Kingma & Gao 2023, Sec. 3)
    lam_l, w_l = dl.eps_loss_weight(dl.linear_path(), "velocity", t)
    torch.testing.assert_close(w_l, torch.exp(-lam_l / 2) / 2, rtol=1e-10, atol=0)


def test_eps_loss_weight_bad_input():
    with pytest.raises(ValueError, match=r"t must lie where alpha\(t\) > 0 and sigma\(t\) > 0"):
        dl.eps_loss_weight(dl.linear_path(), "eps", torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"prediction must be one of"):
        dl.eps_loss_weight(dl.vp_path(), "noise", 0.5)
    with pytest.raises(TypeError, match=r"path must be a diffusion_lab path"):
        dl.eps_loss_weight("vp", "eps", 0.5)


def test_edm_preconditioning_unit_variance():
    """c_in x and F's target (x0 - c_skip x) / c_out have unit variance when Var[x0] = sigma_data^2 (Monte Carlo,
    4 standard errors), c_skip minimises c_out, and the closed forms at sigma = sigma_data."""
    sd = 0.5
    g = torch.Generator().manual_seed(3)
    x0 = dl.ring_mixture(radius=1.0, std=0.1).sample(200_000, g)[0].double()
    x0 = x0 / x0.std(0) * sd                                         # any data with per-coordinate std sigma_data
    for sigma in (0.01, 0.5, 3.0, 80.0):
        c_skip, c_out, c_in, c_noise = dl.edm_preconditioning(sigma, sd)
        x = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        for v in ((c_in * x).var(0), ((x0 - c_skip * x) / c_out).var(0)):
            se = math.sqrt(2 / x0.shape[0]) * 1.5                   # var of a variance estimate; kurtosis margin
            assert float((v - 1).abs().max()) < 4 * se, (sigma, v)
        # c_out^2 = min over c of Var[x0 - c x] = (1 - c)^2 sd^2 + c^2 sigma^2, attained at c_skip
        def var(c):
            return (1 - c) ** 2 * sd ** 2 + c ** 2 * sigma ** 2
        c = float(c_skip)
        assert var(c) < min(var(c - 1e-4 * c), var(c + 1e-4 * c))
        assert float(c_out) ** 2 == pytest.approx(var(c), rel=1e-12)
        assert float(c_noise) == pytest.approx(math.log(sigma) / 4)
    c_skip, c_out, c_in, _ = dl.edm_preconditioning(sd, sd)
    assert (float(c_skip), float(c_out), float(c_in)) == pytest.approx((0.5, sd / math.sqrt(2), 1 / (sd * math.sqrt(2))))


def test_edm_preconditioning_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.EDMEulerScheduler(sigma_data=0.5)
    sigma = torch.tensor([0.002, 0.3, 2.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = dl.edm_preconditioning(sigma, 0.5)
    x, f = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(c_skip * x + c_out * f, sched.precondition_outputs(x, f, sigma), rtol=1e-12, atol=0)
    torch.testing.assert_close(c_in * x, sched.precondition_inputs(x, sigma), rtol=1e-12, atol=0)
    torch.testing.assert_close(c_noise, sched.precondition_noise(sigma), rtol=1e-12, atol=0)


def test_edm_preconditioning_bad_input():
    with pytest.raises(ValueError, match=r"sigma must be positive, got a minimum of 0"):
        dl.edm_preconditioning(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"sigma_data must be in \(0, inf\], got -1.0"):
        dl.edm_preconditioning(1.0, -1.0)


@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_path_loss_of_the_oracle_is_the_mmse(prediction):
    """For Gaussian data N(0, s^2 I) the exact model's loss is the MMSE, per dimension alpha^2 s^2 / (alpha^2 s^2 +
    sigma^2) for eps and s^2 sigma^2 / (alpha^2 s^2 + sigma^2) for x0, averaged over t ~ U(t_min, 1) (quadrature).
    A wrong target (eps for x0, or x_t's alpha dropped) moves the loss by far more than the tolerance."""
    s = 0.7
    mix = dl.GaussianMixture([[0.0, 0.0]], stds=s)
    path = dl.vp_path()
    model = mix.path_model(path, prediction)
    x0 = mix.sample(100_000, torch.Generator().manual_seed(4))[0].double()
    loss = float(dl.path_loss(model, path, prediction, x0, torch.Generator().manual_seed(5)))
    t = torch.linspace(path.t_min, 1, 200_001, dtype=torch.float64)
    a2, s2 = path.alpha(t) ** 2, path.sigma(t) ** 2
    mmse = (a2 * s * s if prediction == "eps" else s * s * s2) / (a2 * s * s + s2)
    expected = float(torch.trapezoid(mmse, t)) / (1 - path.t_min)
    assert abs(loss - expected) < 0.02 * expected, (loss, expected)


def test_train_path_model_is_seeded_and_learns():
    data = dl.make_toy("moons", 512, torch.Generator().manual_seed(0))[0]
    path = dl.vp_path()
    m1, l1 = dl.train_path_model(data, path, "v", steps=40, batch_size=128, progress=False)
    m2, l2 = dl.train_path_model(data, path, "v", steps=40, batch_size=128, progress=False)
    assert l1 == l2 and len(l1) == 40
    assert sum(l1[-10:]) / 10 < 0.7 * sum(l1[:10]) / 10          # an untrained net's v-loss is about 1.5
    x = dl.ode_sample(m1, path, (8, 2), steps=3, prediction="v", generator=torch.Generator().manual_seed(1))
    assert x.shape == (8, 2) and bool(torch.isfinite(x).all())


def test_train_path_model_bad_input():
    data = torch.zeros(16, 2)
    with pytest.raises(ValueError, match=r"prediction must be one of"):
        dl.train_path_model(data, dl.vp_path(), "noise", steps=1, progress=False)
    with pytest.raises(TypeError, match=r"path must be a diffusion_lab path"):
        dl.train_path_model(data, "vp", "eps", steps=1, progress=False)
    with pytest.raises(TypeError, match=r"unknown training option"):
        dl.train_path_model(data, dl.vp_path(), "eps", stepz=1)


# ---- found by mutation testing (issue 17): grids and objectives ---------------------------------------------------
def test_sampling_times_default_rho_and_the_ratio_messages():
    """karras' default rho is EDM's 7 (Eq. 5 written out here); the message for a path without a finite sigma/alpha
    at an end names both ratios, computed by hand: linear_path(t_max=0.999) has 0.999 / 0.001 = 999 at t_max and
    0 / 1 at t_min = 0; linear_path() has alpha(1) = 0 (inf); a linear path with t_min = 0.2 has 0.2 / 0.8."""
    vp = dl.vp_path()
    ts = torch.tensor(dl.sampling_times(vp, 10, "karras")[:-1], dtype=torch.float64)
    r = vp.sigma(ts) / vp.alpha(ts)
    lo, hi = float(r[-1]) ** (1 / 7), float(r[0]) ** (1 / 7)
    ref = torch.tensor([(hi + (lo - hi) * i / 9) ** 7 for i in range(10)], dtype=torch.float64)
    torch.testing.assert_close(r, ref, rtol=1e-9, atol=0)

    class LinearFrom02(dl.paths.LinearPath):      # alpha(t_max = 1) = 0, sigma(t_min) = 0.2, alpha(t_min) = 0.8
        t_min = 0.2

    for path, spacing, ends in [(dl.linear_path(t_max=0.999), "log_snr", "999 at t_max = 0.999 and 0 at t_min = 0.0"),
                                (dl.linear_path(), "karras", "inf at t_max = 1.0 and 0 at t_min = 0.0"),
                                (LinearFrom02(), "log_snr", "inf at t_max = 1.0 and 0.25 at t_min = 0.2")]:
        msg = (f"spacing '{spacing}' needs a finite, positive sigma/alpha at both ends, but this path has "
               f"sigma/alpha = {ends}; use 'uniform' or 'quadratic' on this path")
        with pytest.raises(ValueError) as e:
            dl.sampling_times(path, 5, spacing)
        assert str(e.value) == msg


def test_eps_loss_weight_is_float64_for_any_t_and_needs_sigma_positive():
    """VP closed forms (log alpha = -(beta_min t + (beta_max - beta_min) t^2 / 2) / 2, sigma^2 = 1 - alpha^2, so
    lambda = log(alpha^2 / sigma^2) and d lambda / dt = -beta(t) / sigma^2): a Python float or a float32 tensor t
    still gives float64 results; sigma(t) = 0 (the linear path at t = 0, where alpha = 1) is refused, exact message."""
    vp = dl.vp_path()
    for t in (0.3, torch.tensor([0.3, 0.7], dtype=torch.float32)):
        tt = [0.3] if isinstance(t, float) else [float(v) for v in t]
        lam, w = dl.eps_loss_weight(vp, "eps", t)
        assert lam.dtype == w.dtype == torch.float64 and lam.shape == (len(tt),)
        a2 = [math.exp(-(0.1 * s + 19.9 * s * s / 2)) for s in tt]
        lam_ref = [math.log(a / (1 - a)) for a in a2]
        w_ref = [(1 - a) / ((0.1 + 19.9 * s) * (1 - 1e-3)) for a, s in zip(a2, tt)]
        torch.testing.assert_close(lam, torch.tensor(lam_ref, dtype=torch.float64), rtol=1e-12, atol=0)
        torch.testing.assert_close(w, torch.tensor(w_ref, dtype=torch.float64), rtol=1e-12, atol=0)
    for t in (torch.tensor([0.0, 0.5]), torch.tensor([0.5, 1.0])):          # sigma = 0, then alpha = 0
        with pytest.raises(ValueError) as e:
            dl.eps_loss_weight(dl.linear_path(), "eps", t)
        assert str(e.value) == "t must lie where alpha(t) > 0 and sigma(t) > 0 (the log-SNR is finite)"


def test_edm_preconditioning_default_sigma_data_and_sigma_message():
    """sigma_data defaults to EDM's 0.5: at sigma = 2, sigma^2 + 0.25 = 4.25 (Karras et al. 2022, Table 1)."""
    c_skip, c_out, c_in, c_noise = dl.edm_preconditioning(2.0)
    n = math.sqrt(4.25)
    assert [float(c) for c in (c_skip, c_out, c_in, c_noise)] == pytest.approx(
        [0.25 / 4.25, 2 * 0.5 / n, 1 / n, math.log(2.0) / 4], rel=1e-14)
    with pytest.raises(ValueError) as e:
        dl.edm_preconditioning(torch.tensor([1.0, float("nan")]))
    assert str(e.value) == "sigma must be finite, got 1 non-finite value(s) (NaN or inf) in a tensor of shape (2,)"


def test_path_loss_replayed_by_hand_with_its_generator_cond_and_dtypes():
    """path_loss on linear_path(t_max=0.8) with the velocity target (x_t = (1 - t) x0 + t eps, target eps - x0,
    t = 0.8 u): eps then u drawn from the generator in that order (eps in x0's dtype), the model called with t in
    x0's dtype and the given cond; and x0 checked by name."""
    path = dl.linear_path(t_max=0.8)
    seen = []

    def model(x, t, cond=None):
        seen.append((t.dtype, cond))
        return x * t[:, None] + cond[:, None]

    for dtype in (torch.float64, torch.float32):
        x0 = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=dtype)
        cond = torch.arange(6, dtype=dtype) / 10
        loss = dl.path_loss(model, path, "velocity", x0, torch.Generator().manual_seed(7), cond=cond)
        g = torch.Generator().manual_seed(7)
        eps = torch.randn(6, 3, generator=g, dtype=dtype).double()
        t = 0.8 * torch.rand(6, generator=g, dtype=torch.float64)
        xt = (1 - t[:, None]) * x0.double() + t[:, None] * eps
        ref = float((((xt * t[:, None] + cond.double()[:, None]) - (eps - x0.double())) ** 2).mean())
        assert loss.dtype == dtype and seen[-1][0] == dtype and seen[-1][1] is cond
        assert float(loss) == pytest.approx(ref, rel=1e-12 if dtype == torch.float64 else 1e-5)
    for x0, err, msg in [([[0.0]], TypeError, "x0 must be a torch.Tensor, got list"),
                         (torch.zeros(2, 2, dtype=torch.long), TypeError,
                          "x0 must be a floating-point tensor, got dtype torch.int64"),
                         (torch.tensor([[0.0, float("inf")]]), ValueError,
                          "x0 must be finite, got 1 non-finite value(s) (NaN or inf) in a tensor of shape (1, 2)")]:
        with pytest.raises(err) as e:
            dl.path_loss(model, path, "velocity", x0)
        assert str(e.value) == msg


def test_train_path_model_uses_its_config_model_callback_and_label(capsys):
    """The config's batch size and steps reach the loop (a batch of 5 of the 64 examples, not of the 2 coordinates),
    a given model is the one trained, the callback sees every step, config.net shapes the new network, and the
    progress bar is labelled "train v"."""
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    config = dl.TrainConfig(steps=3, batch_size=5, progress=False, ema_decay=None, warmup=1)

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            self.batches = []

        def forward(self, x, t, cond=None):
            assert x.shape == (5, 2), x.shape                # fail at once on the wrong config
            self.batches.append(x.shape[0])
            return self.lin(x)

    net, steps = Recorder(), []
    model, losses = dl.train_path_model(data, dl.vp_path(), "v", config, model=net,
                                        callback=lambda d: steps.append(d["step"]))
    assert model is net and net.batches == [5, 5, 5] and len(losses) == 3 and steps == [0, 1, 2]
    small = dict(hidden=16, depth=1, emb_dim=8)
    model, _ = dl.train_path_model(data, dl.vp_path(), "v", steps=1, batch_size=8, progress=True, net=small)
    ref = dl.make_velocity_net((2,), **small)
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    assert re.search(r"(^|\r)train v: ", capsys.readouterr().err)     # tqdm's label, "train v: 100%|..."


def test_train_path_model_on_the_simulated_device():
    """On the simulated accelerator of tests/test_device_discipline.py: device= moves the training there (the noise,
    x_t and the model's t made on the device, no float64 there, no sync per step) and the losses are the CPU's."""
    from test_device_discipline import FAKE, _check

    def run(n, device):
        x = torch.randn(200, 2, generator=torch.Generator().manual_seed(3))
        return lambda: dl.train_path_model(x, dl.vp_path(), "eps", steps=n, device=device, batch_size=32,
                                           progress=False, warmup=2, net=dict(hidden=16, depth=1, emb_dim=8))[1]
    losses, _ = _check("train_path_model", run(3, FAKE), run(9, FAKE))
    assert losses == run(9, None)()
