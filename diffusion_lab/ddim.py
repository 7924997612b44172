"""DDIM: the non-Markovian sigma_t family and few-step sampling (Song et al. 2021, Eqs. 12 and 16)."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ._checks import (check_callback, check_generator, check_int, check_number, check_same_device, check_shape,
                      check_tensor, randn)
from .ddpm import _check_cond, _check_model, call_model, model_device
from .forward import _check_schedule
from .schedules import Schedule


def ddim_timesteps(T: int, steps: int, spacing: str = "trailing") -> list[int]:
    """Decreasing sub-sequence of `steps` timesteps in [0, T-1].

    "trailing" starts at T-1 (diffusers' timestep_spacing="trailing"); "leading" is
    [(steps-1) r, ..., r, 0] with r = T // steps (the DDIM paper's and diffusers' default).
    """
    T = check_int("T", T, low=1)
    steps = check_int("steps", steps, low=1, high=T)
    if spacing == "trailing":
        ts = torch.round(torch.arange(T, 0, -T / steps, dtype=torch.float64)).long() - 1
    elif spacing == "leading":
        ts = torch.arange(steps - 1, -1, -1) * (T // steps)
    else:
        raise ValueError(f"spacing must be 'trailing' or 'leading', got {spacing!r}")
    return [int(t) for t in ts[:steps]]


def _alpha_bar(schedule: Schedule, t, like):
    """alpha_bar_t in float64 with the convention alpha_bar_{-1} = 1 (the clean data)."""
    t = t if isinstance(t, torch.Tensor) else torch.tensor(t)
    ab = torch.cat([torch.ones(1, dtype=torch.float64), schedule.alpha_bars])
    return schedule.at(ab, t + 1, like, dtype=torch.float64)


_DIRECTION_VAR_TOL = 1e-12   # float64 rounding allowance for 1 - ab_prev - sigma^2 at eta = eta_max


def _sigma64(ab, ab_prev, eta):
    return eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()


def ddim_sigma(schedule: Schedule, t, t_prev, eta: float, like: torch.Tensor) -> torch.Tensor:
    """sigma_t(eta) = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev) (Song et al. 2021, Eq. 16)."""
    _check_schedule(schedule)
    eta = check_number("eta", eta, low=0)
    check_tensor("like", like)
    t, t_prev = _check_pair(schedule, t, t_prev)
    return _sigma64(_alpha_bar(schedule, t, like), _alpha_bar(schedule, t_prev, like), eta).to(like.dtype)


def _check_pair(schedule, t, t_prev):
    t = schedule.check_t(t)
    if isinstance(t_prev, torch.Tensor):
        if t_prev.dtype.is_floating_point:
            raise TypeError(f"t_prev must hold integer timesteps, got dtype {t_prev.dtype}")
        t_prev = t_prev.long()
    else:
        t_prev = torch.tensor(check_int("t_prev", t_prev, low=-1, high=schedule.T - 2))
    if t_prev.numel() and (int(t_prev.min()) < -1):
        raise ValueError(f"t_prev must be >= -1 (-1 means the clean data x_0), got {int(t_prev.min())}")
    if bool((t_prev >= t).any()):
        raise ValueError(f"t_prev must be smaller than t, got t = {t.tolist()} and t_prev = {t_prev.tolist()}")
    return t, t_prev


def ddim_step(schedule: Schedule, xt: torch.Tensor, eps: torch.Tensor, t, t_prev, eta: float = 0.0,
              noise: torch.Tensor | None = None, clip_x0: float | None = None) -> torch.Tensor:
    """x_{t_prev} = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps + sigma noise (Song et al. 2021, Eq. 12).

    t_prev = -1 means the last step, to x_0 (alpha_bar = 1). eta = 0 is deterministic DDIM;
    eta = 1 with t_prev = t - 1 is DDPM's ancestral step with the posterior variance. An eta so large
    that 1 - ab_prev - sigma^2 < 0 (above sqrt((1 - ab) ab_prev / (ab_prev - ab)), which is >= 1)
    raises ValueError instead of clamping, which would break the marginal condition.
    """
    _check_schedule(schedule)
    check_tensor("xt", xt)
    check_tensor("eps", eps)
    if eps.shape != xt.shape:
        raise ValueError(f"eps must have the shape of xt {tuple(xt.shape)}, got {tuple(eps.shape)}")
    check_same_device(xt=xt, eps=eps)
    eta = check_number("eta", eta, low=0)
    t, t_prev = _check_pair(schedule, t, t_prev)
    if (t.ndim and t.shape[0] != xt.shape[0]) or (t_prev.ndim and t_prev.shape[0] != xt.shape[0]):
        raise ValueError(f"t and t_prev must be ints or have shape ({xt.shape[0]},)")
    ab = _alpha_bar(schedule, t, xt)             # float64 coefficients, cast at the end
    ab_prev = _alpha_bar(schedule, t_prev, xt)
    dt = xt.dtype
    # 1. predicted x0 (Eq. 12, first term)
    x0_hat = (xt - (1 - ab).sqrt().to(dt) * eps) / ab.sqrt().to(dt)
    if clip_x0 is not None:
        # clip the prediction, then re-derive eps from it so that both terms of Eq. 12 agree (as
        # GLIDE does; diffusers' use_clipped_model_output=True). Keeping the raw eps, diffusers'
        # default, turned classifier-free-guided digits at scale 3 into noise.
        x0_hat = x0_hat.clamp(-clip_x0, clip_x0)
        eps = (xt - ab.sqrt().to(dt) * x0_hat) / (1 - ab).sqrt().to(dt)
    # 2. sigma_t(eta) (Eq. 16)
    sigma = _sigma64(ab, ab_prev, eta)
    # 3. direction pointing to x_t (Eq. 12, second term). Its variance 1 - ab_prev - sigma^2 must
    # be >= 0 for the marginal of x_{t_prev} to stay N(sqrt(ab_prev) x0, 1 - ab_prev): that is
    # eta <= sqrt((1 - ab) ab_prev / (ab_prev - ab)), a bound >= 1 that tends to 1 as ab_prev -> 1
    # (on the last step, ab_prev = 1, sigma = 0 for every eta). At eta = 1 a sweep of every pair of
    # the linear and cosine schedules never went below 0, but at eta = the bound the float64 value
    # rounds to as low as -9e-15, so values down to -_DIRECTION_VAR_TOL count as 0; anything below is
    # a too-large eta, not rounding (eta = 1.001 x the bound gives about -2e-3 (1 - ab_prev)).
    direction_var = 1 - ab_prev - sigma ** 2
    bad = direction_var < -_DIRECTION_VAR_TOL
    if bool(bad.any()):
        eta_max = ((1 - ab) * ab_prev / (ab_prev - ab)).sqrt().expand_as(bad)[bad].min().item()
        raise ValueError(f"eta must be <= {eta_max:.6g} at this step (t = {t.tolist()}, t_prev = {t_prev.tolist()}) so that "
                         f"1 - alpha_bar_prev - sigma^2 >= 0 (the marginal condition), got eta = {eta}")
    direction = direction_var.clamp(min=0).sqrt().to(dt) * eps
    x_prev = ab_prev.sqrt().to(dt) * x0_hat + direction
    # 4. random noise (Eq. 12, third term)
    if eta > 0:
        if noise is None:
            raise ValueError("noise is required when eta > 0 (pass a standard normal tensor of xt's shape)")
        check_tensor("noise", noise)
        if noise.shape != xt.shape:
            raise ValueError(f"noise must have xt's shape {tuple(xt.shape)}, got {tuple(noise.shape)}")
        check_same_device(xt=xt, noise=noise)
        x_prev = x_prev + sigma.to(dt) * noise
    return x_prev


@torch.no_grad()
def ddim_sample(model, schedule: Schedule, shape, steps: int = 50, eta: float = 0.0, cond=None,
                generator: torch.Generator | None = None, callback=None, *, xT: torch.Tensor | None = None,
                device=None, spacing: str = "trailing", clip_x0: float | None = None, progress: bool = False) -> torch.Tensor:
    """DDIM sampling over `steps` timesteps (Song et al. 2021). callback gets
    {"i", "t", "t_prev", "x", "x0_hat"} after every step.

    The first step divides by sqrt(alpha_bar_T): about 6e-3 for the linear schedule but 5e-5
    for the cosine one (T = 1000), so a model's eps error there is multiplied by ~2e4. Without
    clip_x0, a cosine-schedule model trained on a 2-D toy gave DDIM-50 samples far off the
    data (sliced Wasserstein 9.5, against 0.02 with the linear schedule); pass clip_x0 (e.g.
    the data range) or use the linear schedule."""
    _check_model(model)
    _check_schedule(schedule)
    shape = check_shape("shape", shape)
    _check_cond(cond, shape[0])
    eta = check_number("eta", eta, low=0)
    check_callback(callback)
    check_generator(generator)
    ts = ddim_timesteps(schedule.T, steps, spacing)
    device = model_device(model, device)
    x = randn(shape, generator, device=device) if xT is None else check_tensor("xT", xT).to(device)
    if x.shape != shape:
        raise ValueError(f"xT must have shape {shape}, got {tuple(x.shape)}")
    for i, t in enumerate(tqdm(ts, desc="DDIM", disable=not progress)):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        eps = call_model(model, x, t, cond)
        noise = randn(shape, generator, device=device, dtype=x.dtype) if eta > 0 else None
        x_new = ddim_step(schedule, x, eps, t, t_prev, eta=eta, noise=noise, clip_x0=clip_x0)
        if callback is not None:
            ab = _alpha_bar(schedule, t, x)
            x0_hat = (x - (1 - ab).sqrt().to(x.dtype) * eps) / ab.sqrt().to(x.dtype)
            callback({"i": i, "t": t, "t_prev": t_prev, "x": x_new, "x0_hat": x0_hat})
        x = x_new
    return x


@torch.no_grad()
def ddim_invert(model, schedule: Schedule, x0: torch.Tensor, steps: int = 50, cond=None, *,
                spacing: str = "trailing", progress: bool = False) -> torch.Tensor:
    """Run the deterministic (eta = 0) DDIM update backwards, from data x_0 up to x_T.

    Each step x_{t_prev} -> x_t reuses eps evaluated at (x_{t_prev}, t), the usual
    approximation; decoding the result with ddim_sample(..., xT=...) gives x_0 back up to
    the discretization error.
    """
    _check_model(model)
    _check_schedule(schedule)
    check_tensor("x0", x0)
    _check_cond(cond, x0.shape[0])
    ts = ddim_timesteps(schedule.T, steps, spacing)[::-1]    # increasing
    x = x0
    prev = -1
    for t in tqdm(ts, desc="DDIM inversion", disable=not progress):
        eps = call_model(model, x, t, cond)
        ab_prev = _alpha_bar(schedule, prev, x)
        ab = _alpha_bar(schedule, t, x)
        dt = x.dtype
        x0_hat = (x - (1 - ab_prev).sqrt().to(dt) * eps) / ab_prev.sqrt().to(dt)
        x = ab.sqrt().to(dt) * x0_hat + (1 - ab).sqrt().to(dt) * eps
        prev = t
    return x
