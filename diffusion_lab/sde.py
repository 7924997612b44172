r"""The reverse-time SDE :math:`dx = [f(t)\,x - g(t)^2\,\nabla\log p_t(x)]\,dt + g(t)\,d\bar w` (Anderson 1982;
Song et al. 2021b, Eq. 6), integrated from :math:`t = t_\max` to 0 by Euler-Maruyama; the last step, into
:math:`t = 0`, is the denoiser.
"""
from __future__ import annotations

import math

import torch

from ._checks import check_int, randn
from ._sampling import check_path, start
from .ode import check_start, coefficients, time_grid
from .predictions import to_pair


@torch.no_grad()
def sde_sample(model, path, shape, steps: int = 500, prediction: str = "eps", cond=None,
               generator: torch.Generator | None = None, x_T: torch.Tensor | None = None, callback=None, *,
               device=None) -> torch.Tensor:
    r"""Sample the reverse-time SDE by Euler-Maruyama (Anderson 1982; Song et al. 2021b, Eq. 6).

    .. math:: dx = \big[f(t)\,x - g(t)^2\,\nabla\log p_t(x)\big]\,dt + g(t)\,d\bar w,

    stepped as :math:`x \leftarrow x + (f x - g^2 s)\,h + g\sqrt{-h}\,z` with :math:`h = t_\text{next} - t < 0`, over a
    grid uniform in :math:`t` from ``t_max`` to ``t_min``, then 0; the last step, into :math:`t = 0`, is the denoiser.

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
        Number of network calls (default 500).
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
    steps = check_int("steps", steps, low=1)
    check_start(path, prediction)
    x, call = start(model, shape, prediction, cond, generator, x_T, callback, device, float(path.sigma(path.t_max)))
    ts = time_grid(path, steps)
    C = coefficients(path, ts)
    t64 = torch.tensor(ts[:-1], dtype=torch.float64).clamp(min=1e-12)
    f, g2 = path.f(t64).tolist(), path.g2(t64).tolist()
    for i in range(steps):
        t, tn, c = ts[i], ts[i + 1], C[i]
        x0, eps = to_pair(call(x, t, i), x, prediction, *c)
        if tn == 0:
            x_new = x0
        else:
            h = tn - t
            score = -eps / c[1]
            x_new = x + (f[i] * x - g2[i] * score) * h + math.sqrt(g2[i] * -h) * randn(x.shape, generator, device=x.device, dtype=x.dtype)
        if callback is not None:
            callback({"i": i, "t": t, "t_next": tn, "x": x_new, "x0_hat": x0})
        x = x_new
    call.finish()
    return x
