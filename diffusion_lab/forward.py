"""The forward (noising) process and its Gaussian posterior (Ho et al. 2020, Eqs. 4, 6, 7)."""
from __future__ import annotations

import torch

from ._checks import check_same_device, check_same_shape, check_tensor
from .schedules import Schedule


def _check_schedule(schedule):
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a diffusion_lab Schedule, got {type(schedule).__name__}")


def _check_batch_t(t: torch.Tensor, x: torch.Tensor, name: str = "t"):
    if t.ndim == 1 and t.shape[0] != x.shape[0]:
        raise ValueError(f"{name} must be an int or have shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
    if t.ndim > 1:
        raise ValueError(f"{name} must be an int or a 1-D tensor of shape (B,), got shape {tuple(t.shape)}")


def q_sample(schedule: Schedule, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise, a draw from q(x_t | x_0) (Eq. 4)."""
    _check_schedule(schedule)
    check_tensor("x0", x0)
    check_tensor("noise", noise)
    check_same_shape(x0=x0, noise=noise)
    check_same_device(x0=x0, noise=noise)
    t = schedule.check_t(t)
    _check_batch_t(t, x0)
    return _q_sample(schedule, x0, t, noise)


def _q_sample(schedule: Schedule, x0: torch.Tensor, t, noise: torch.Tensor, tables=None) -> torch.Tensor:
    """q_sample without the checks (for loops whose arguments were checked once): no device-to-host sync.
    `tables` = (sqrt(alpha_bar), sqrt(1 - alpha_bar)) in float64 on the CPU, precomputed by the caller."""
    if tables is None:
        ab = schedule.alpha_bars
        tables = ab.sqrt(), (1 - ab).sqrt()
    return schedule.at(tables[0], t, x0) * x0 + schedule.at(tables[1], t, x0) * noise


def predict_x0(schedule: Schedule, xt: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
    """Invert Eq. 4 for x0 given the noise: x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
    _check_schedule(schedule)
    check_tensor("xt", xt)
    check_tensor("eps", eps)
    check_same_shape(xt=xt, eps=eps)
    t = schedule.check_t(t)
    _check_batch_t(t, xt)
    ab = schedule.alpha_bars
    return (xt - schedule.at((1 - ab).sqrt(), t, xt) * eps) / schedule.at(ab.sqrt(), t, xt)


def posterior_coefficients(schedule: Schedule, t, like: torch.Tensor):
    """(c0, ct, var) with q(x_{t-1} | x_t, x_0) = N(c0 x0 + ct xt, var); at t = 0, c0 = 1, ct = 0, var = 0.
    Computed in float64 on the whole schedule, then gathered and cast to like's dtype."""
    _check_schedule(schedule)
    t = schedule.check_t(t)
    ab, ab_prev, beta = schedule.alpha_bars, schedule.alpha_bars_prev, schedule.betas
    c0 = beta * ab_prev.sqrt() / (1 - ab)          # Ho et al. 2020, Eq. 7
    ct = (1 - ab_prev) * (1 - beta).sqrt() / (1 - ab)
    return schedule.at(c0, t, like), schedule.at(ct, t, like), schedule.at(schedule.posterior_variances, t, like)


def q_posterior(schedule: Schedule, x0: torch.Tensor, xt: torch.Tensor, t):
    """(mean, variance) of q(x_{t-1} | x_t, x_0) for t >= 1 (Ho et al. 2020, Eqs. 6-7).

    variance is broadcastable against x0 (shape (B, 1, ...) for tensor t, a scalar for int t).
    """
    _check_schedule(schedule)
    check_tensor("x0", x0)
    check_tensor("xt", xt)
    check_same_shape(x0=x0, xt=xt)
    check_same_device(x0=x0, xt=xt)
    t = schedule.check_t(t, low=1)
    _check_batch_t(t, x0)
    c0, ct, var = posterior_coefficients(schedule, t, x0)
    return c0 * x0 + ct * xt, var
