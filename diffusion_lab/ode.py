r"""The probability-flow ODE :math:`dx/dt = \alpha'(t)\,\hat x_0 + \sigma'(t)\,\hat\epsilon` (Song et al. 2021b, Eq. 13,
written on the path :math:`x_t = \alpha x_0 + \sigma\epsilon`), solved from :math:`t = t_\max` to :math:`t = 0` with
Euler, Heun, classical RK4 or DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2). One right-hand side serves
every path and prediction.
"""
from __future__ import annotations

import torch

from ._checks import check_int, check_tensor
from ._sampling import check_path, start
from .dpm_solver import dpmpp_2m_update
from .grids import sampling_times
from .predictions import to_pair

METHODS = ("euler", "heun", "rk4", "dpm++2m", "ddim")


def time_grid(path, steps: int) -> list[float]:
    """steps + 1 descending times ending at 0: uniform in t from t_max to t_min, then 0 if t_min > 0.
    The last step, into t = 0 where a path may be singular, is the denoising step x <- x0_hat."""
    if path.t_min > 0:
        ts = torch.linspace(path.t_max, path.t_min, steps, dtype=torch.float64).tolist() + [0.0]
    else:
        ts = torch.linspace(path.t_max, 0.0, steps + 1, dtype=torch.float64).tolist()
    return ts


def coefficients(path, ts) -> list[tuple]:
    """(alpha, sigma, alpha', sigma') per time as Python floats, computed in float64 at that time (t = 0, where a
    path may be singular, at 1e-12; it is only ever a denoising step's target there)."""
    t = torch.tensor(ts, dtype=torch.float64).clamp(min=1e-12)
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
               spacing: str = "uniform", device=None) -> torch.Tensor:
    r"""Sample by solving the probability-flow ODE from :math:`t = t_\max` to :math:`t = 0` (Song et al. 2021b, Eq. 13).

    On the path the ODE reads :math:`dx/dt = \alpha'(t)\,\hat x_0 + \sigma'(t)\,\hat\epsilon`; it starts from
    :math:`x_T \sim \sigma(t_\max)\,\mathcal N(0, I)` (or the given ``x_T``) and runs over the times
    :func:`sampling_times` gives for ``spacing`` (uniform in :math:`t` from ``t_max`` to ``t_min`` by default), then
    to 0 if ``t_min > 0``: that last step, into :math:`t = 0` where a path may be singular, is the denoising step
    :math:`x \leftarrow \hat x_0`.

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
        Number of steps (default 50). Network calls: ``"euler"``, ``"ddim"`` and ``"dpm++2m"`` ``steps``, ``"heun"``
        ``2 steps - 1``, ``"rk4"`` ``4 steps - 3`` (the last step only denoises).
    method : {"heun", "euler", "rk4", "dpm++2m", "ddim"}, optional
        The solver (default ``"heun"``); ``"dpm++2m"`` is DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2);
        ``"ddim"`` is DDIM's deterministic update (the first-order DPM-Solver, Lu et al. 2022a, Sec. 4.1).
    prediction : {"eps", "x0", "v", "score", "velocity"}, optional
        What ``model`` returns (default ``"eps"``).
    cond : torch.Tensor, optional
        Integer labels, shape ``(B,)``.
    generator : torch.Generator, optional
        Source of :math:`x_T` (and of the noise of stochastic steps).
    x_T : torch.Tensor, optional
        A starting point of shape ``shape`` instead of a fresh draw.
    spacing : {"uniform", "quadratic", "log_snr", "karras"}, optional
        The time grid (default ``"uniform"`` in :math:`t`), from :func:`sampling_times`.
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
    ts = sampling_times(path, steps, spacing)
    check_start(path, prediction)
    x, call = start(model, shape, prediction, cond, generator, x_T, callback, device, float(path.sigma(path.t_max)))
    x = _integrate(call, x, path, ts, method, prediction, callback)
    call.finish()
    return x


@torch.no_grad()
def ode_solve(model, path, x: torch.Tensor, times, method: str = "heun", prediction: str = "eps", cond=None,
              callback=None) -> torch.Tensor:
    r"""Integrate the probability-flow ODE from ``x`` at ``times[0]`` along ``times``, in either direction.

    The ODE is :math:`dx/dt = \alpha'(t)\,\hat x_0 + \sigma'(t)\,\hat\epsilon`, as in :func:`ode_sample`, but from a
    given state over a given grid: decreasing times sample, increasing times invert.

    Parameters
    ----------
    model : callable
        ``model(x, t, cond) -> prediction`` at float times ``t`` of shape ``(B,)``.
    path : GaussianPath
        The path the model lives on.
    x : torch.Tensor
        The state at ``times[0]``, shape ``(B, ...)``, on the model's device.
    times : sequence of float
        At least two strictly monotone times in :math:`[0, 1]`. Decreasing: sampling (a final 0 is the denoising
        step :math:`x \leftarrow \hat x_0`). Increasing: inversion, e.g. DDIM inversion = method ``"euler"`` in
        the right variables, or ``"dpm++2m"``; an increasing grid must start where :math:`\sigma > 0`
        (:math:`t > 0`).
    method : {"heun", "euler", "rk4", "dpm++2m", "ddim"}, optional
        The solver (default ``"heun"``), as in :func:`ode_sample`.
    prediction : {"eps", "x0", "v", "score", "velocity"}, optional
        What ``model`` returns (default ``"eps"``).
    cond : torch.Tensor, optional
        Labels passed to the model.
    callback : callable, optional
        Gets ``{"i", "t", "t_next", "x", "x0_hat"}`` after every step.

    Returns
    -------
    torch.Tensor
        The state at ``times[-1]``, of ``x``'s shape.

    Raises
    ------
    TypeError
        If ``model`` is not callable, ``path`` is not a path, or ``x`` is not a floating-point tensor.
    ValueError
        If ``method`` or ``prediction`` is unknown; ``times`` are not at least two strictly monotone numbers in
        :math:`[0, 1]`; an increasing grid starts where :math:`\sigma = 0`; ``prediction`` is ``"eps"`` or
        ``"score"`` and :math:`\alpha = 0` at the largest time (no :math:`x_0` there); or the model's output has
        the wrong shape or holds NaN or inf.
    """
    check_path(path)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    ts = [float(t) for t in torch.as_tensor(times, dtype=torch.float64).reshape(-1).tolist()]
    d = [b - a for a, b in zip(ts[:-1], ts[1:])]
    if len(ts) < 2 or not (all(h < 0 for h in d) or all(h > 0 for h in d)) or min(ts) < 0 or max(ts) > 1:
        raise ValueError(f"times must be at least two strictly increasing or decreasing numbers in [0, 1], got {ts[:6]}")
    if d[0] > 0 and float(path.sigma(ts[0])) == 0:
        raise ValueError(f"an increasing grid must start where sigma > 0, got times[0] = {ts[0]} "
                         f"(start at path.t_min = {path.t_min} or above)")
    if float(path.alpha(max(ts))) == 0 and prediction in ("eps", "score"):
        raise ValueError(f"prediction {prediction!r} cannot give x0 where alpha(t) = 0 (t = {max(ts)})")
    check_tensor("x", x, finite=False)
    x, call = start(model, tuple(x.shape), prediction, cond, None, x, callback, None, 1.0, name="x")
    x = _integrate(call, x, path, ts, method, prediction, callback)
    call.finish()
    return x


def _integrate(call, x, path, ts, method, prediction, callback):
    """The solver loop shared by ode_sample and ode_solve: x at ts[0] -> x at ts[-1]."""
    C = coefficients(path, ts)
    mids = coefficients(path, [(a + b) / 2 for a, b in zip(ts[:-1], ts[1:])]) if method == "rk4" else None

    def velocity(x, t, c, i):
        x0, eps = to_pair(call(x, t, i), x, prediction, *c)
        return c[2] * x0 + c[3] * eps, x0

    x0_prev = h_prev = None
    for i in range(len(ts) - 1):
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
        elif method == "ddim":                       # first-order exponential integrator in lambda: DDIM (eta = 0)
            x_new, _ = dpmpp_2m_update(x, x0, None, c, cn, None)
        else:                                        # DPM-Solver++(2M) in lambda = log(alpha / sigma)
            x_new, h_prev = dpmpp_2m_update(x, x0, x0_prev, c, cn, h_prev)
            x0_prev = x0
        if callback is not None:
            callback({"i": i, "t": t, "t_next": tn, "x": x_new, "x0_hat": x0})
        x = x_new
    return x
