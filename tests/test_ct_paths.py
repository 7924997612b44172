"""Continuous-time paths and predictions, closed form: alpha, sigma, their derivatives, the SDE's f and g^2
against the papers' formulas and finite differences; convert_prediction against the definitions for every
(src, dst) pair and in round trips; the VP probability-flow velocity against f x - g^2/2 score; bad input."""
import math

import pytest
import torch

import diffusion_lab as dl
from diffusion_lab.predictions import PREDICTIONS

T = torch.tensor([0.001, 0.05, 0.2, 0.5, 0.77, 0.95], dtype=torch.float64)
SCHED = dl.linear_schedule()
PATHS = {"vp": dl.vp_path(), "ve": dl.ve_path(), "linear": dl.linear_path(), "schedule": dl.schedule_path(SCHED),
         "cosine": dl.schedule_path(dl.cosine_schedule())}


def test_vp_path_formulas():
    p = dl.vp_path(beta_min=0.1, beta_max=20.0)
    B = 0.1 * T + 0.5 * (20.0 - 0.1) * T ** 2                          # int_0^t beta
    torch.testing.assert_close(p.alpha(T), torch.exp(-B / 2), rtol=1e-14, atol=0)
    torch.testing.assert_close(p.sigma(T), torch.sqrt(1 - torch.exp(-B)), rtol=1e-12, atol=0)
    beta = 0.1 + T * 19.9
    torch.testing.assert_close(p.f(T), -beta / 2, rtol=1e-12, atol=0)   # Song et al. 2021, Eq. 32
    torch.testing.assert_close(p.g2(T), beta, rtol=1e-10, atol=0)


def test_ve_path_formulas():
    p = dl.ve_path(sigma_min=0.01, sigma_max=50.0)
    torch.testing.assert_close(p.sigma(T), 0.01 * 5000.0 ** T, rtol=1e-13, atol=0)
    assert bool((p.alpha(T) == 1).all()) and bool((p.f(T) == 0).all())
    torch.testing.assert_close(p.g2(T), 2 * p.sigma(T) ** 2 * math.log(5000.0), rtol=1e-12, atol=0)  # Eq. 30


def test_linear_path_formulas():
    p = dl.linear_path()
    torch.testing.assert_close(p.alpha(T), 1 - T)
    torch.testing.assert_close(p.sigma(T), T)
    torch.testing.assert_close(p.f(T), -1 / (1 - T), rtol=1e-13, atol=0)
    torch.testing.assert_close(p.g2(T), 2 * T / (1 - T), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["schedule", "cosine"])
def test_schedule_path_hits_alpha_bars(name):
    """Integer timestep n sits at t = (n + 1) / T with alpha^2 = alpha_bar_n; between them beta(t) is constant."""
    p = PATHS[name]
    n = torch.tensor([0, 1, 10, 500, 998, 999])
    torch.testing.assert_close(p.alpha(p.timestep(n)) ** 2, p.schedule.alpha_bars[n], rtol=1e-12, atol=0)
    torch.testing.assert_close(p.sigma(p.timestep(n)) ** 2, 1 - p.schedule.alpha_bars[n], rtol=1e-9, atol=0)
    assert float(p.alpha(0.0)) == 1.0 and p.t_min == 1 / 1000
    # beta(t) = -T log(1 - beta_n) inside interval n, i.e. ~ T beta_n: the discrete chain's rate
    mid = p.timestep(n) - 0.5 / 1000
    torch.testing.assert_close(p.g2(mid), -1000 * torch.log1p(-p.schedule.betas[n]), rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", list(PATHS))
def test_derivatives_match_finite_differences(name):
    p, h = PATHS[name], 1e-6
    t = T[(T > 0.0015) & (T < 0.99)] + 0.0003          # off the schedule grid's kinks
    for value, deriv in [(p.alpha, p.d_alpha), (p.sigma, p.d_sigma)]:
        fd = (value(t + h) - value(t - h)) / (2 * h)
        torch.testing.assert_close(deriv(t), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", list(PATHS))
def test_sde_reproduces_the_path_variance(name):
    """Var[x_t | x_0] = sigma(t)^2 solves d v / dt = 2 f v + g^2 (Sarkka & Solin 2019, Eq. 5.51); checked with the
    solution v(t1) = v(t0) e^{F(t1)} + int e^{F(t1) - F(s)} g^2(s) ds, F = int 2 f, by the trapezoid rule on
    200,001 points, so a wrong g^2 (e.g. sigma sigma' instead of 2 sigma sigma') or a wrong sign of f fails."""
    p = PATHS[name]
    s = torch.linspace(0.2, 0.9, 200_001, dtype=torch.float64)
    two_f, g2 = 2 * p.f(s), p.g2(s)
    F = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumulative_trapezoid(two_f, s)])
    v = p.sigma(0.2) ** 2 * torch.exp(F[-1]) + torch.trapezoid(torch.exp(F[-1] - F) * g2, s)
    assert abs(float(v - p.sigma(0.9) ** 2)) < 1e-6


def _all_kinds(path, t, x0, eps):
    """Every prediction kind from its definition."""
    a, s, da, ds = (f(t)[:, None] for f in (path.alpha, path.sigma, path.d_alpha, path.d_sigma))
    return a * x0 + s * eps, {"eps": eps, "x0": x0, "v": a * eps - s * x0, "score": -eps / s,
                              "velocity": da * x0 + ds * eps}


@pytest.mark.parametrize("name", ["vp", "ve", "linear", "schedule"])
def test_convert_prediction_matches_definitions_for_every_pair(name):
    path, g = PATHS[name], torch.Generator().manual_seed(0)
    t = T.clone()
    x0 = torch.randn(len(t), 3, generator=g, dtype=torch.float64)
    eps = torch.randn(len(t), 3, generator=g, dtype=torch.float64)
    x, kinds = _all_kinds(path, t, x0, eps)
    for src in PREDICTIONS:
        for dst in PREDICTIONS:
            out = dl.convert_prediction(kinds[src], x, t, path, src, dst)
            torch.testing.assert_close(out, kinds[dst], rtol=1e-9, atol=1e-9, msg=f"{src} -> {dst}")


@pytest.mark.parametrize("name", ["vp", "linear"])
def test_convert_prediction_round_trips_in_float32(name):
    path, g = PATHS[name], torch.Generator().manual_seed(1)
    t = torch.full((64,), 0.4)
    pred = torch.randn(64, 2, generator=g)
    x = torch.randn(64, 2, generator=g)
    for src in PREDICTIONS:
        for dst in PREDICTIONS:
            back = dl.convert_prediction(dl.convert_prediction(pred, x, t, path, src, dst), x, t, path, dst, src)
            torch.testing.assert_close(back, pred, rtol=1e-5, atol=1e-5, msg=f"{src} -> {dst} -> {src}")


def test_vp_velocity_in_eps_form_equals_the_sde_form():
    """Probability-flow ODE (Song et al. 2021, Eq. 13): dx/dt = f x - g^2 / 2 score, with score = -eps / sigma."""
    p, g = PATHS["vp"], torch.Generator().manual_seed(2)
    t = T.clone()
    x = torch.randn(len(t), 2, generator=g, dtype=torch.float64)
    eps = torch.randn(len(t), 2, generator=g, dtype=torch.float64)
    u = dl.convert_prediction(eps, x, t, p, "eps", "velocity")
    f, g2, s = p.f(t)[:, None], p.g2(t)[:, None], p.sigma(t)[:, None]
    torch.testing.assert_close(u, f * x - g2 / 2 * (-eps / s), rtol=1e-10, atol=1e-12)


def test_t_of_ratio_inverts_sigma_over_alpha():
    for name in ["vp", "ve", "linear", "schedule"]:
        p = PATHS[name]
        t = torch.tensor([0.01, 0.3, 0.8, 0.95], dtype=torch.float64)
        r = p.sigma(t) / p.alpha(t)
        torch.testing.assert_close(p.t_of_ratio(r), t, rtol=1e-9, atol=1e-12)


# ---- bad input ----------------------------------------------------------------------
@pytest.mark.parametrize("call, match", [
    (lambda: dl.vp_path(beta_min=-0.1), r"beta_min must be in \[0"),
    (lambda: dl.vp_path(beta_min=1.0, beta_max=0.5), r"beta_max must be in \[1.0"),
    (lambda: dl.ve_path(sigma_min=1.0, sigma_max=1.0), r"sigma_min must be smaller than sigma_max.*1.0"),
    (lambda: dl.ve_path(sigma_min=5.0, sigma_max=1.0), r"sigma_min must be smaller than sigma_max.*5.0"),
    (lambda: dl.ve_path(sigma_min=0.0), r"sigma_min must be in \(0"),
    (lambda: dl.linear_path(t_max=1.5), r"t_max must be in \(0"),
    (lambda: dl.vp_path().alpha(1.2), r"t must be in \[0, 1\].*1.2"),
    (lambda: dl.ve_path().sigma(torch.tensor([-0.1, 0.5])), r"t must be in \[0, 1\].*-0.1"),
    (lambda: dl.vp_path().sigma(torch.tensor([float("nan")])), r"t must be finite"),
    (lambda: dl.convert_prediction(torch.zeros(2, 2), torch.zeros(2, 2), 0.5, dl.vp_path(), "noise", "x0"),
     r"src must be one of \('eps', 'x0', 'v', 'score', 'velocity'\), got 'noise'"),
    (lambda: dl.convert_prediction(torch.zeros(2, 2), torch.zeros(2, 2), 0.5, dl.vp_path(), "eps", "flow"),
     r"dst must be one of .*got 'flow'"),
    (lambda: dl.convert_prediction(torch.zeros(2, 2), torch.zeros(2, 2), 1.5, dl.vp_path(), "eps", "x0"),
     r"t must be in \[0, 1\].*1.5"),
    (lambda: dl.convert_prediction(torch.zeros(2, 3), torch.zeros(2, 2), 0.5, dl.vp_path(), "eps", "x0"),
     r"pred must have x's shape \(2, 2\), got \(2, 3\)"),
    (lambda: dl.convert_prediction(torch.full((2, 2), float("nan")), torch.zeros(2, 2), 0.5, dl.vp_path(), "eps", "x0"),
     r"pred must be finite"),
    (lambda: dl.schedule_path("linear"), r"schedule must be a diffusion_lab Schedule, got str"),
    (lambda: dl.vp_path().t_of_ratio(1e6), r"r must be in this path's range"),
])
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# ---- found by the paths / predictions mutation run (issue 17) ------------------------
def _vp_t_of_ratio(r, beta_min=0.1, beta_max=20.0):
    """VP's inverse of sigma/alpha in closed form: alpha^2 = 1/(1 + r^2), so int_0^t beta = log(1 + r^2), a
    quadratic in t: (beta_max - beta_min)/2 t^2 + beta_min t - log(1 + r^2) = 0."""
    d = beta_max - beta_min
    return (-beta_min + math.sqrt(beta_min ** 2 + 2 * d * math.log1p(r * r))) / d


def test_path_parameters_defaults_and_exact_messages():
    # VPPath: beta_max > 0 on its own (beta_min = beta_max = 0 passes the beta_max >= beta_min check), any
    # beta_max > 0 allowed (0.5 < 1), t_min in the open interval (0, 1), named in the message
    with pytest.raises(ValueError) as e:
        dl.VPPath(0.0, 0.0)
    assert str(e.value) == "beta_max must be positive (else nothing is noised), got 0.0"
    p = dl.VPPath(0.1, 0.5)
    assert abs(float(p.alpha(1.0)) - math.exp(-0.5 * (0.1 + 0.5 * 0.4))) < 1e-15
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError) as e:
            dl.VPPath(t_min=bad)
        assert str(e.value) == f"t_min must be in (0, 1), got {bad}"
    assert dl.VPPath(t_min=1e-300).t_min == 1e-300 and dl.VPPath(t_min=0.999).t_min == 0.999
    # VEPath: sigma_max checked by name, open at 0 (not only by the sigma_min < sigma_max test)
    with pytest.raises(ValueError) as e:
        dl.VEPath(sigma_max=0.0)
    assert str(e.value) == "sigma_max must be in (0, inf], got 0.0"
    with pytest.raises(ValueError) as e:
        dl.VEPath(sigma_max=-1.0)
    assert str(e.value) == "sigma_max must be in (0, inf], got -1.0"
    # the factories pass every argument on, with the documented defaults
    assert dl.vp_path(t_min=0.01).t_min == 0.01 and dl.vp_path(0.2, 10.0).beta_max == 10.0
    assert (dl.vp_path().beta_min, dl.vp_path().beta_max, dl.vp_path().t_min) == (0.1, 20.0, 1e-3)
    assert (dl.ve_path().sigma_min, dl.ve_path().sigma_max) == (0.01, 50.0)


def test_check_time_gives_float64_on_the_cpu_and_names_t():
    p = dl.vp_path()
    t32 = torch.tensor([0.3, 0.7], dtype=torch.float32)
    t = t32.double()                                      # the float32 values, exactly
    B = 0.1 * t + 0.5 * 19.9 * t ** 2
    for out, want in [(p.alpha(t32), torch.exp(-B / 2)), (p.sigma(t32), torch.sqrt(-torch.expm1(-B)))]:
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, want, rtol=1e-14, atol=0)
    with pytest.raises(TypeError) as e:
        p.alpha("0.5")
    assert str(e.value) == "t must be a real number, got '0.5' (str)"


def test_t_of_ratio_float64_closed_form_and_tolerance_at_the_top():
    vp = dl.vp_path()
    for r in (0.3, 1.7, 25.0):                            # Python floats: float32 would be off by ~1e-8
        out = vp.t_of_ratio(r)
        assert out.dtype == torch.float64
        assert abs(float(out) - _vp_t_of_ratio(r)) < 1e-13 * _vp_t_of_ratio(r)
    lin = dl.linear_path()
    out = lin.t_of_ratio(0.3)
    assert out.dtype == torch.float64 and float(out) == 0.3 / 1.3
    # the range's top end is accepted up to a relative 1e-6 exactly (float32 sigmas), not twice the range.
    # VE with sigma 1 -> 2: sigma/alpha = 2 at t_max = 1 exactly.
    ve = dl.VEPath(1.0, 2.0)
    assert float(ve.t_of_ratio(2.0 * (1 + 1e-6))) == 1.0
    with pytest.raises(ValueError) as e:
        ve.t_of_ratio(2.02)
    assert str(e.value) == ("r must be in this path's range [1, 2] (sigma/alpha between t_min and t_max), "
                            "got 2.02 to 2.02")
    half = dl.LinearPath(t_max=0.5)                      # sigma/alpha = 1 at t_max
    assert float(half.t_of_ratio(1.0 * (1 + 1e-6))) == 0.5
    with pytest.raises(ValueError) as e:
        half.t_of_ratio(1.01)
    assert str(e.value) == "r must be in this path's range [0, 1] (sigma/alpha up to t_max = 0.5), got 1.01 to 1.01"


def test_schedule_path_beta_at_the_ends():
    # beta(t) = -T log(1 - beta_n) on (n/T, (n + 1)/T]; t = 0 belongs to the first interval
    p, b = PATHS["schedule"], SCHED.betas.tolist()
    for t, n in [(0.0, 0), (0.0004, 0), (0.001, 0), (0.0011, 1), (0.9995, 999), (1.0, 999)]:
        assert abs(float(p.beta(t)) + 1000 * math.log1p(-b[n])) < 1e-12 * 1000 * b[n], (t, n)


def test_convert_prediction_scalar_t_messages_and_shapes():
    p, g = dl.vp_path(), torch.Generator().manual_seed(3)
    x, eps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    B = 0.1 * 0.3 + 0.5 * 19.9 * 0.3 ** 2
    a, s = math.exp(-B / 2), math.sqrt(-math.expm1(-B))
    want = (x - s * eps) / a
    for t in (0.3, torch.tensor(0.3, dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64),
              torch.full((4,), 0.3, dtype=torch.float64)):
        torch.testing.assert_close(dl.convert_prediction(eps, x, t, p, "eps", "x0"), want, rtol=1e-14, atol=1e-15)
    with pytest.raises(ValueError) as e:
        dl.convert_prediction(eps, x, torch.full((2,), 0.3), p, "eps", "x0")
    assert str(e.value) == "t must be a number or have shape (4,), got (2,)"
    with pytest.raises(TypeError) as e:
        dl.convert_prediction(eps, x.tolist(), 0.3, p, "eps", "x0")
    assert str(e.value) == "x must be a torch.Tensor, got list"


def test_paths_and_conversions_on_a_device_keep_float64_on_the_cpu():
    # the simulated accelerator of tests/test_device_discipline.py: check_time copies a device t to the CPU
    # in float64 (float64 never goes to the device); convert_prediction moves its coefficients to x's device
    from test_device_discipline import FAKE, OnDevice, run_on_device, to_host
    p, g = dl.vp_path(), torch.Generator().manual_seed(4)
    t = torch.tensor([0.2, 0.5, 0.9])
    out, rec = run_on_device(lambda: dl.paths.check_time(t.to(FAKE)))
    assert not isinstance(out, OnDevice) and out.device.type == "cpu" and out.dtype == torch.float64
    assert out.tolist() == t.double().tolist() and not rec.float64
    x, pred = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    want = dl.convert_prediction(pred, x, t, p, "eps", "x0")
    out, rec = run_on_device(lambda: dl.convert_prediction(pred.to(FAKE), x.to(FAKE), t, p, "eps", "x0"))
    assert isinstance(out, OnDevice) and not rec.float64
    assert torch.equal(to_host(out), want)
