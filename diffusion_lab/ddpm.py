"""DDPM: the simplified epsilon loss (Ho et al. 2020, Eq. 14 / Algorithm 1) and ancestral
sampling (Algorithm 2). The model contract is model(x, t, cond=None) -> eps_hat."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ._checks import check_callback, check_generator, check_same_device, check_shape, check_tensor, randn
from .forward import _check_schedule, _q_sample, posterior_coefficients, predict_x0
from .schedules import Schedule


def _check_model(model):
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, t, cond=None), got {type(model).__name__}")


def _check_cond(cond, batch: int):
    if cond is None:
        return
    if not isinstance(cond, torch.Tensor) or cond.dtype.is_floating_point or cond.ndim != 1 or cond.shape[0] != batch:
        shape = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
        raise ValueError(f"cond must be None or an integer tensor of labels with shape ({batch},), got {shape}")


def model_device(model, device=None) -> torch.device:
    """The device to sample on: `device` if given, else the model's parameters', else the CPU."""
    if device is not None:
        return torch.device(device)
    if isinstance(model, torch.nn.Module):
        p = next(model.parameters(), None)
        if p is not None:
            return p.device
    return torch.device("cpu")


def call_model(model, x: torch.Tensor, t: int, cond=None) -> torch.Tensor:
    """Evaluate the model at one integer time for the whole batch and check its output."""
    tt = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
    eps = model(x, tt, cond)
    if not isinstance(eps, torch.Tensor) or eps.shape != x.shape:
        got = tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
        raise ValueError(f"model output must have the input's shape {tuple(x.shape)}, got {got}")
    if not bool(torch.isfinite(eps).all()):
        raise ValueError(f"model output at t = {t} is not finite (NaN or inf): the model is broken or diverged")
    return eps


def ddpm_loss(model, schedule: Schedule, x0: torch.Tensor, cond=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """E_{t, eps} || eps - eps_theta(sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, t) ||^2 with t uniform (Eq. 14)."""
    _check_model(model)
    _check_schedule(schedule)
    check_tensor("x0", x0)
    _check_cond(cond, x0.shape[0])
    check_generator(generator)
    return _ddpm_loss(model, schedule, x0, cond, generator)


def _ddpm_loss(model, schedule: Schedule, x0, cond, generator, tables=None) -> torch.Tensor:
    """ddpm_loss without the checks, for training loops (no device-to-host sync). t is drawn on the
    generator's device; the coefficients are gathered there from float64 tables, then cast and moved."""
    gen_device = generator.device if generator is not None else x0.device
    t_gen = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator, device=gen_device)
    t = t_gen.to(x0.device, non_blocking=True)
    noise = randn(x0.shape, generator, device=x0.device, dtype=x0.dtype)
    xt = _q_sample(schedule, x0, t_gen, noise, tables)
    eps_hat = model(xt, t, cond)
    return torch.mean((eps_hat - noise) ** 2)


def ddpm_step(schedule: Schedule, xt: torch.Tensor, eps: torch.Tensor, t: int, noise: torch.Tensor | None = None,
              variance: str = "posterior", clip_x0: float | None = None):
    """One ancestral step x_t -> x_{t-1} (Algorithm 2). Returns (x_prev, x0_hat).

    mean = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps), equal to the posterior
    mean of q(x_{t-1} | x_t, x0_hat); variance "posterior" is beta_tilde_t, "beta" is beta_t.
    At t = 0 the step returns the mean (no noise). clip_x0 clamps x0_hat to [-clip_x0, clip_x0].
    """
    if variance not in ("posterior", "beta"):
        raise ValueError(f"variance must be 'posterior' or 'beta', got {variance!r}")
    _check_schedule(schedule)
    t = schedule.check_t(t)
    if t.ndim != 0:
        raise ValueError(f"t must be a single integer timestep for ddpm_step, got shape {tuple(t.shape)}")
    t = int(t)
    x0_hat = predict_x0(schedule, xt, eps, t)
    if clip_x0 is not None:
        x0_hat = x0_hat.clamp(-clip_x0, clip_x0)
    c0, ct, post_var = posterior_coefficients(schedule, t, xt)
    mean = c0 * x0_hat + ct * xt
    if t == 0:
        return mean, x0_hat
    var = post_var if variance == "posterior" else schedule.at(schedule.betas, t, xt)
    if noise is None:
        raise ValueError("noise is required for t >= 1 (pass a standard normal tensor of the input's shape)")
    check_tensor("noise", noise)
    if noise.shape != xt.shape:
        raise ValueError(f"noise must have xt's shape {tuple(xt.shape)}, got {tuple(noise.shape)}")
    check_same_device(xt=xt, noise=noise)
    return mean + var.sqrt() * noise, x0_hat


@torch.no_grad()
def ddpm_sample(model, schedule: Schedule, shape, cond=None, generator: torch.Generator | None = None, callback=None,
                *, xT: torch.Tensor | None = None, device=None, variance: str = "posterior",
                clip_x0: float | None = None, progress: bool = False) -> torch.Tensor:
    """Ancestral sampling from x_T ~ N(0, I) down to x_0 (Ho et al. 2020, Algorithm 2).

    callback, if given, is called after every step with a dict
    {"i": step index, "t": t, "x": x_{t-1}, "x0_hat": predicted x0}.
    """
    _check_model(model)
    _check_schedule(schedule)
    shape = check_shape("shape", shape)
    _check_cond(cond, shape[0])
    check_callback(callback)
    check_generator(generator)
    device = model_device(model, device)
    x = randn(shape, generator, device=device) if xT is None else check_tensor("xT", xT).to(device)
    if x.shape != shape:
        raise ValueError(f"xT must have shape {shape}, got {tuple(x.shape)}")
    for i, t in enumerate(tqdm(range(schedule.T - 1, -1, -1), desc="DDPM", disable=not progress)):
        eps = call_model(model, x, t, cond)
        noise = randn(shape, generator, device=device, dtype=x.dtype) if t > 0 else None
        x, x0_hat = ddpm_step(schedule, x, eps, t, noise, variance=variance, clip_x0=clip_x0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0_hat": x0_hat})
    return x
