r"""DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2) on a discrete-time :math:`\epsilon`-model, with diffusers'
``DPMSolverMultistepScheduler`` defaults: ``"linspace"`` timesteps, midpoint second-order update, a first-order
first step, and a last step to :math:`\sigma = 0` that is first order (it returns the predicted :math:`x_0`).
"""
from __future__ import annotations

import math

import numpy as np

import torch

from ._checks import check_int
from ._sampling import start
from .forward import _check_schedule
from .schedules import Schedule


def dpmpp_2m_update(x, x0, x0_prev, c, cn, h_prev):
    """One step from (alpha, sigma) = c to cn with data prediction x0 (and the previous one, or None):
    x' = sigma'/sigma x - alpha' (e^-h - 1) D, D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev, r = h_prev / h,
    h the step in lambda = log(alpha/sigma) (Lu et al. 2022b, Eq. 18 and Algorithm 2). Returns (x', h)."""
    lam = math.log(c[0] / c[1]) if c[0] > 0 else -math.inf      # alpha = 0: the step from there is first order
    lam_n = math.log(cn[0] / cn[1]) if cn[1] > 0 else math.inf
    h = lam_n - lam
    if cn[1] == 0:                                                 # to sigma = 0: x' = x0 (first order)
        return x0, h
    d = x0 if x0_prev is None else (1 + h / (2 * h_prev)) * x0 - h / (2 * h_prev) * x0_prev
    return cn[1] / c[1] * x - cn[0] * math.expm1(-h) * d, h


def dpm_solver_timesteps(T: int, steps: int) -> list[int]:
    """diffusers' "linspace" spacing: round(linspace(0, T - 1, steps + 1)) reversed, without the 0. NumPy's
    linspace, as diffusers uses: torch's float64 linspace lands on the other side of some exact halves (at
    T = 1000, 138 of the step counts 1-1000 gave one timestep off, e.g. 500 for 499 at 30 steps)."""
    return [int(t) for t in np.linspace(0, T - 1, steps + 1).round()[::-1][:-1]]


@torch.no_grad()
def dpm_solver_sample(model, schedule: Schedule, shape, steps: int = 20, cond=None,
                      generator: torch.Generator | None = None, x_T: torch.Tensor | None = None, callback=None, *,
                      device=None) -> torch.Tensor:
    r"""DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2) with ``steps`` network calls on a discrete-time :math:`\epsilon`-model.

    Uses diffusers' ``DPMSolverMultistepScheduler`` defaults: ``"linspace"`` timesteps, the midpoint
    second-order update, a first-order first step, and a last step to :math:`\sigma = 0` that is first order
    (it returns :math:`\hat x_0`). Coefficients :math:`\alpha = \sqrt{\bar\alpha}`, :math:`\sigma = \sqrt{1 - \bar\alpha}`
    are computed in float64 (diffusers computes them in float32; ``tests/test_ct_reference.py`` shows what
    that changes).

    Parameters
    ----------
    model : callable
        ``model(x, t, cond) -> eps_hat`` with integer ``t`` (chapter 7's contract).
    schedule : Schedule
        The schedule it was trained with.
    shape : tuple of int
        The output shape ``(B, ...)``.
    steps : int, optional
        Network calls, in ``[1, T]`` (default 20).
    cond : torch.Tensor, optional
        Integer labels, shape ``(B,)``.
    generator : torch.Generator, optional
        Source of :math:`x_T \sim \mathcal N(0, I)`.
    x_T : torch.Tensor, optional
        A starting point instead of a fresh draw.
    callback : callable, optional
        Called after every step with ``{"i", "t", "x", "x0_hat"}``.
    device : torch.device or str, optional
        Where to sample.

    Returns
    -------
    torch.Tensor
        Samples :math:`x_0`, of shape ``shape``.

    Raises
    ------
    TypeError
        If ``model`` is not callable or ``schedule`` is not a :class:`Schedule`.
    ValueError
        If ``steps`` is out of range, a shape is wrong, or the model's output holds NaN or inf.
    """
    _check_schedule(schedule)
    steps = check_int("steps", steps, low=1, high=schedule.T)
    x, call = start(model, shape, "eps", cond, generator, x_T, callback, device, 1.0)
    call.time_dtype = torch.long
    ts = dpm_solver_timesteps(schedule.T, steps)
    ab = schedule.alpha_bars[ts]
    C = list(zip(ab.sqrt().tolist(), (1 - ab).sqrt().tolist())) + [(1.0, 0.0)]
    x0_prev = h_prev = None
    for i, t in enumerate(ts):
        eps = call(x, t, i)
        x0 = (x - C[i][1] * eps) / C[i][0]                          # data prediction
        x, h_prev = dpmpp_2m_update(x, x0, x0_prev, C[i], C[i + 1], h_prev)
        x0_prev = x0
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0_hat": x0})
    call.finish()
    return x
