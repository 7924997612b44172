r"""The probability-flow ODE :math:`dx/dt = \alpha'(t)\,\hat x_0 + \sigma'(t)\,\hat\epsilon` (Song et al. 2021, Eq. 13,
written on the path :math:`x_t = \alpha x_0 + \sigma\epsilon`), solved from :math:`t = t_\max` to :math:`t = 0` with
Euler, Heun, classical RK4 or DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2). One right-hand side serves
every path and prediction.
"""
from __future__ import annotations

import torch

from ._checks import check_int
from ._sampling import check_path, start
from .dpm_solver import dpmpp_2m_update
from .predictions import to_pair

METHODS = ("euler", "heun", "rk4", "dpm++2m")


def time_grid(path, steps: int) -> list[float]:
    """steps + 1 descending times ending at 0: uniform in t from t_max to t_min, then 0 if t_min > 0.
    The last step, into t = 0 where a path may be singular, is the denoising step x <- x0_hat."""
    if path.t_min > 0:
        ts = torch.linspace(path.t_max, path.t_min, steps, dtype=torch.float64).tolist() + [0.0]
    else:
        ts = torch.linspace(path.t_max, 0.0, steps + 1, dtype=torch.float64).tolist()
    return ts


def coefficients(path, ts) -> list[tuple]:
    """(alpha, sigma, alpha', sigma') per time as Python floats, computed in float64."""
    t = torch.tensor(ts, dtype=torch.float64).clamp(min=path.t_min if path.t_min > 0 else 1e-12)
    c = torch.stack([path.alpha(t), path.sigma(t), path.d_alpha(t), path.d_sigma(t)], 1)
    return [tuple(row) for row in c.tolist()]


def check_start(path, prediction):
    a = float(path.alpha(path.t_max))
    if a == 0 and prediction in ("eps", "score"):
        raise ValueError(f"prediction {prediction!r} cannot give x0 where alpha(t) = 0 (t_max = {path.t_max}); "
                         "use a path with t_max < 1, e.g. linear_path(t_max=0.999), or an x0/v/velocity model")


@torch.no_grad()
def ode_sample(model, path, shape, steps: int = 50, method: str = "heun", prediction: str = "eps", cond=None,
               generator: torch.Generator | None = None, x_T: torch.Tensor | None = None, callback=None, *,
               device=None) -> torch.Tensor:
    r"""Sample by solving the probability-flow ODE from :math:`t = t_\max` to :math:`t = 0` (Song et al. 2021, Eq. 13).

    On the path the ODE reads :math:`dx/dt = \alpha'(t)\,\hat x_0 + \sigma'(t)\,\hat\epsilon`; it starts from
    :math:`x_T \sim \sigma(t_\max)\,\mathcal N(0, I)` (or the given ``x_T``) and runs over a grid uniform in
    :math:`t` from ``t_max`` to ``t_min``, then to 0 if ``t_min > 0``: that last step, into :math:`t = 0` where a
    path may be singular, is the denoising step :math:`x \leftarrow \hat x_0`.

    Parameters
    ----------
    model : callable
        A continuous-time model ``model(x, t, cond) -> prediction`` with float ``t`` of shape ``(B,)``
        (a discrete-time model goes through :func:`discrete_model`; guide with :func:`cfg`).
    path : GaussianPath
        The path, e.g. :func:`vp_path`, :func:`linear_path`, :func:`schedule_path`.
    shape : tuple of int
        The output shape ``(B, ...)``.
    steps : int, optional
        Number of steps (default 50). Network calls: ``"euler"`` and ``"dpm++2m"`` ``steps``, ``"heun"``
        ``2 steps - 1``, ``"rk4"`` ``4 steps - 3`` (the last step only denoises).
    method : {"heun", "euler", "rk4", "dpm++2m"}, optional
        The solver (default ``"heun"``); ``"dpm++2m"`` is DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2).
    prediction : {"eps", "x0", "v", "score", "velocity"}, optional
        What ``model`` returns (default ``"eps"``).
    cond : torch.Tensor, optional
        Integer labels, shape ``(B,)``.
    generator : torch.Generator, optional
        Source of :math:`x_T` (and of the noise of stochastic steps).
    x_T : torch.Tensor, optional
        A starting point of shape ``shape`` instead of a fresh draw.
    callback : callable, optional
        Called after every step with ``{"i", "t", "t_next", "x", "x0_hat"}``.
    device : torch.device or str, optional
        Where to sample (default: the model's device, else the CPU).

    Returns
    -------
    torch.Tensor
        Samples :math:`x_0`, of shape ``shape``.

    Raises
    ------
    TypeError
        If ``model`` is not callable, ``path`` is not a path, or a tensor argument is not a floating-point tensor.
    ValueError
        If an option is unknown or out of range, ``prediction`` cannot give :math:`x_0` where
        :math:`\alpha(t_\max) = 0`, a shape is wrong, or the model's output holds NaN or inf.
    """
    check_path(path)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    steps = check_int("steps", steps, low=1)
    check_start(path, prediction)
    x, call = start(model, shape, prediction, cond, generator, x_T, callback, device, float(path.sigma(path.t_max)))
    ts = time_grid(path, steps)
    C = coefficients(path, ts)
    mids = coefficients(path, [(a + b) / 2 for a, b in zip(ts[:-1], ts[1:])]) if method == "rk4" else None

    def velocity(x, t, c, i):
        x0, eps = to_pair(call(x, t, i), x, prediction, *c)
        return c[2] * x0 + c[3] * eps, x0

    x0_prev = h_prev = None
    for i in range(steps):
        t, tn, c, cn = ts[i], ts[i + 1], C[i], C[i + 1]
        h = tn - t
        u, x0 = velocity(x, t, c, i)
        if tn == 0:                                  # denoise: the limit of a first-order step to sigma = 0
            x_new = x0
        elif method == "euler":
            x_new = x + h * u
        elif method == "heun":                       # explicit trapezoid (Karras et al. 2022, Algorithm 1)
            u2, _ = velocity(x + h * u, tn, cn, i)
            x_new = x + h / 2 * (u + u2)
        elif method == "rk4":                        # classical Runge-Kutta
            k2, _ = velocity(x + h / 2 * u, (t + tn) / 2, mids[i], i)
            k3, _ = velocity(x + h / 2 * k2, (t + tn) / 2, mids[i], i)
            k4, _ = velocity(x + h * k3, tn, cn, i)
            x_new = x + h / 6 * (u + 2 * k2 + 2 * k3 + k4)
        else:                                        # DPM-Solver++(2M) in lambda = log(alpha / sigma)
            x_new, h_prev = dpmpp_2m_update(x, x0, x0_prev, c, cn, h_prev)
            x0_prev = x0
        if callback is not None:
            callback({"i": i, "t": t, "t_next": tn, "x": x_new, "x0_hat": x0})
        x = x_new
    call.finish()
    return x
