"""Reference checks of the continuous-time samplers against diffusers (a test-only dependency; skipped without it)
and scipy: DPM-Solver++(2M) against DPMSolverMultistepScheduler() with its defaults, EDM's Euler/Heun over Karras
sigmas against EulerDiscreteScheduler/HeunDiscreteScheduler(use_karras_sigmas=True), RK4 against solve_ivp."""
import math

import numpy as np
import pytest
import torch

import diffusion_lab as dl
from diffusion_lab.ode import time_grid

GM = dl.ring_mixture()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _diffusers():
    return pytest.importorskip("diffusers")


def _run(sched, model, x):
    """diffusers' own sampling loop over sched.timesteps, model(x, t) -> eps on integer t."""
    for t in sched.timesteps:
        x = sched.step(model(x, t.expand(x.shape[0])), t, x).prev_sample
    return x


@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_matches_diffusers_defaults_on_the_linear_schedule(steps):
    """DPMSolverMultistepScheduler() defaults (dpmsolver++, order 2, midpoint, linspace, lower_order_final,
    final_sigmas_type "zero", linear betas 1e-4..0.02, T = 1000): same timesteps, same samples within 1e-4 from
    the same x_T with the exact mixture eps-model (measured 1.7e-6 at 10 steps, 1.5e-5 at 20). Swapping the
    multistep ratio r, a missing lower-order final step or leading spacing moves samples by 1e-2 or more."""
    diffusers = _diffusers()
    s = dl.linear_schedule()
    model = GM.eps_model(s)
    sched = diffusers.DPMSolverMultistepScheduler()
    sched.set_timesteps(steps)
    assert sched.timesteps.tolist() == dl.dpm_solver.dpm_solver_timesteps(1000, steps)
    x_T = torch.randn(500, 2, generator=_gen(0))
    ours = dl.dpm_solver_sample(model, s, (500, 2), steps=steps, x_T=x_T)
    assert float((ours - _run(sched, model, x_T.clone())).abs().max()) < 1e-4


@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_on_the_cosine_schedule_is_closer_to_float64_than_diffusers(steps):
    """On the cosine schedule alpha_bar_999 = 2.4e-9, so the first step's x0 = (x - sigma eps) / alpha divides by
    alpha = 4.9e-5 and multiplies any error in sigma by ~2e4. Measured against the same sampler run in float64:
    ours (float32 samples, float64 coefficients) 7.5e-6 (10 steps) / 1.1e-5 (20); diffusers 3.6e-3 / 1.2e-3.
    Where diffusers' error comes from: it keeps sigma_t as alpha_t * sqrt((1 - ab) / ab) in float32, i.e. the
    product of two rounded numbers next to 1, which is off by 5.8e-8 (one float32 ulp) at t = 999, against
    1.2e-9 when sqrt(1 - ab) is formed in float64 and rounded once; 5.8e-8 |eps| / 4.9e-5 = 1.2e-3 |eps|. Its
    float32 cumprod also leaves alpha_bar_999 off by 1.3e-5 (relative), a smaller 7e-6 relative error in x0."""
    diffusers = _diffusers()
    s = dl.cosine_schedule()
    model = GM.eps_model(s)
    sched = diffusers.DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2")
    sched.set_timesteps(steps)
    x_T = torch.randn(500, 2, generator=_gen(0))
    ours = dl.dpm_solver_sample(model, s, (500, 2), steps=steps, x_T=x_T)
    ref64 = dl.dpm_solver_sample(model, s, (500, 2), steps=steps, x_T=x_T.double())
    theirs = _run(sched, model, x_T.clone())
    err_ours, err_theirs = float((ours - ref64).abs().max()), float((theirs.double() - ref64).abs().max())
    assert err_ours < 1e-4 and err_theirs > 1e-4 and err_ours < err_theirs / 20
    # the explanation, checked: diffusers' sigma_t at t = 999 is one float32 ulp (or more) away from sqrt(1 - ab)
    _, sigma_t = sched._sigma_to_alpha_sigma_t(sched.sigmas[0])
    assert abs(float(sigma_t) - math.sqrt(1 - float(s.alpha_bars[999]))) > 3e-8


def _edm_pair(kind, steps):
    """Our edm_sample and diffusers' Euler/Heun loop over the same Karras sigmas, from the same x~_T, both with
    the exact mixture denoiser at the exact noise level (the conventions meet there; see the docstring below)."""
    diffusers = _diffusers()
    s = dl.linear_schedule()
    path = dl.schedule_path(s)
    cls = diffusers.EulerDiscreteScheduler if kind == "euler" else diffusers.HeunDiscreteScheduler
    sched = cls(use_karras_sigmas=True, beta_start=1e-4, beta_end=0.02)     # Heun's defaults are SD's betas
    sched.set_timesteps(steps)
    ends = sched.sigmas[sched.sigmas > 0].double()
    ours_sig = dl.karras_sigmas(steps, sigma_min=float(ends.min()), sigma_max=float(ends.max()))
    x_T = float(ours_sig[0]) * torch.randn(400, 2, generator=_gen(1))
    x = x_T.clone()
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t)                        # x / sqrt(sigma^2 + 1) = alpha x~
        sig = float(sched.sigmas[sched.step_index])
        a = 1 / math.sqrt(sig ** 2 + 1)
        eps = GM.posterior_means(x_in, a, sig * a)[1].float()
        x = sched.step(eps, t, x).prev_sample
    ours = dl.edm_sample(GM.path_model(path, "eps"), path, (400, 2), ours_sig, method=kind, x_T=x_T)
    return ours, x, ours_sig, sched


@pytest.mark.parametrize("kind, steps", [("euler", 10), ("euler", 20), ("heun", 10), ("heun", 18)])
def test_edm_euler_heun_match_diffusers_karras(kind, steps):
    """EulerDiscreteScheduler / HeunDiscreteScheduler(use_karras_sigmas=True, betas 1e-4..0.02) on the linear
    schedule: their Karras sigmas equal karras_sigmas(steps, their sigma_min, their sigma_max, rho = 7) to float32
    precision; the end points themselves, sigma of timestep 0 (0.0100) and 999 (157.4), differ from ours by up to
    8e-5 (relative) because diffusers forms 1 - alpha_bar_0 = 1e-4 in float32. The samples agree within 1e-4
    when both sides evaluate the exact denoiser at the exact noise level.
    Where the conventions differ: diffusers passes the network the fractional timestep interpolated in
    log-sigma (not rounded) and the input x~ / sqrt(sigma^2 + 1) for the unrounded sigma; our discrete_model
    adapter rounds to the timestep with the nearest log-SNR and rescales x to that timestep's noise level (a
    network trained on integer timesteps never saw fractional ones). diffusers' sigmas are float32, ours float64.
    """
    ours, theirs, ours_sig, sched = _edm_pair(kind, steps)
    their_sig = sched.sigmas.unique_consecutive()[:-1].double()
    torch.testing.assert_close(their_sig, ours_sig, rtol=2e-6, atol=0)
    ab = dl.linear_schedule().alpha_bars
    ends64 = torch.stack([(1 - ab[-1]) / ab[-1], (1 - ab[0]) / ab[0]]).sqrt()
    torch.testing.assert_close(their_sig[[0, -1]], ends64, rtol=1e-4, atol=0)
    assert float((ours - theirs).abs().max()) < 1e-4


def test_rk4_matches_scipy_solve_ivp():
    """The probability-flow ODE of the ring mixture on the VP path, solved by scipy's RK45 (rtol 1e-10,
    atol 1e-10) from the same x_T to t_min, then the same denoising step. Measured in float64, RK4's largest
    error is 8.8e-4, 1.1e-4, 8.7e-6 at 100, 200, 400 uniform steps (the steep start of sigma near t_min = 1e-3
    dominates): at 400 steps within 1e-4, and 200 -> 400 divides it by > 8 (a second-order method: 4)."""
    integrate = pytest.importorskip("scipy.integrate")
    path, steps = dl.vp_path(), 400
    model = GM.path_model(path, "velocity")
    x_T = torch.randn(64, 2, generator=_gen(2), dtype=torch.float64)
    ts = time_grid(path, steps)
    assert time_grid(path, 200)[-2] == ts[-2]

    def f(t, y):
        x = torch.from_numpy(y).reshape(64, 2)
        return model(x, torch.full((64,), t, dtype=torch.float64)).reshape(-1).numpy()
    # first_step given: scipy < 1.11 picks the first step without capping it at the interval, and probed
    # the ODE at t = -21.9 (outside the path's [0, 1]) on scipy 1.9.3, the lower bound in pyproject.toml
    sol = integrate.solve_ivp(f, (ts[0], ts[-2]), x_T.reshape(-1).numpy(), method="RK45", rtol=1e-10, atol=1e-10,
                              first_step=1e-4)
    x_min = torch.from_numpy(sol.y[:, -1]).reshape(64, 2)
    ref = GM.path_model(path, "x0")(x_min, torch.full((64,), ts[-2], dtype=torch.float64))
    ours = dl.ode_sample(model, path, (64, 2), steps=steps, method="rk4", prediction="velocity", x_T=x_T)
    half = dl.ode_sample(model, path, (64, 2), steps=steps // 2, method="rk4", prediction="velocity", x_T=x_T)
    err, err_half = float((ours - ref).abs().max()), float((half - ref).abs().max())
    assert err < 1e-4 and err_half > 8 * err, (err, err_half)
