r"""Exact log-likelihoods by the probability-flow ODE and the instantaneous change of variables
(Chen et al. 2018, Theorem 1; Song et al. 2021b, Eq. 39):
:math:`\log p_0(x) = \log p_1(x_1) + \int_0^1 \nabla\cdot u(x_t, t)\,dt`, with the divergence exact (autograd,
:math:`D` backward passes) or Hutchinson's unbiased estimate :math:`\mathbb E[z^\top (\partial u/\partial x)\,z]`
(Grathwohl et al. 2019), one probe :math:`z` per sample for the whole solve.
"""
from __future__ import annotations

import math

import torch

from ._checks import check_generator, check_int, check_tensor, randn
from ._sampling import ModelCaller, check_path
from .ddpm import _check_cond, _check_model
from .ode import check_start, coefficients
from .predictions import check_prediction, to_pair

DIVERGENCES = ("exact", "hutchinson")


def ode_log_likelihood(model, path, x: torch.Tensor, prediction: str = "eps", steps: int = 100, cond=None,
                       divergence: str = "exact", generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Exact log-likelihood :math:`\log p_0(x)` in nats by the probability-flow ODE (Song et al. 2021b, Eq. 39).

    The instantaneous change of variables (Chen et al. 2018, Theorem 1),
    :math:`\log p_0(x) = \log p_1(x_1) + \int_0^1 \nabla\cdot u(x_t, t)\,dt`, integrated for
    :math:`[x, \log\det]` from ``t_min`` to ``t_max`` with classical RK4 over ``steps`` uniform steps in :math:`t`.
    The prior at ``t_max`` is :math:`\mathcal N(0, \sigma(t_\max)^2 I)`: exact for the linear path, and it
    neglects :math:`\alpha(t_\max)\,x_0` (VP: :math:`\alpha(1)` = 6.7e-3). Where ``t_min > 0`` (VP: 1e-3) the result is
    :math:`\log p_{t_\min}(x)`, the data blurred by :math:`\sigma(t_\min)` (VP: 0.01). The model must be
    differentiable in :math:`x`.

    Parameters
    ----------
    model : callable
        A continuous-time model ``model(x, t, cond) -> prediction`` with float ``t`` of shape ``(B,)``
        (a discrete-time model goes through :func:`discrete_model`; guide with :func:`cfg`).
    path : GaussianPath
        The path, e.g. :func:`vp_path`, :func:`linear_path`, :func:`schedule_path`.
    x : torch.Tensor
        Data, shape ``(B, ...)``.
    prediction : {"eps", "x0", "v", "score", "velocity"}, optional
        What ``model`` returns (default ``"eps"``).
    steps : int, optional
        RK4 steps (default 100).
    cond : torch.Tensor, optional
        Integer labels, shape ``(B,)``.
    divergence : {"exact", "hutchinson"}, optional
        ``"exact"`` (autograd, :math:`D` backward passes; default) or Hutchinson's unbiased estimate
        :math:`\mathbb E[z^\top (\partial u/\partial x)\,z]` (Grathwohl et al. 2019), one probe :math:`z` per
        sample for the whole solve.
    generator : torch.Generator, optional
        Source of the Hutchinson probes.

    Returns
    -------
    torch.Tensor
        :math:`\log p_0(x)` per sample, shape ``(B,)``.

    Raises
    ------
    TypeError
        If ``model`` is not callable, ``path`` is not a path, or a tensor argument is not a floating-point tensor.
    ValueError
        If an option is unknown or out of range, ``prediction`` cannot give :math:`x_0` where
        :math:`\alpha(t_\max) = 0`, a shape is wrong, or the model's output holds NaN or inf.
    """
    _check_model(model)
    check_path(path)
    check_prediction(prediction)
    check_start(path, prediction)
    check_tensor("x", x)
    _check_cond(cond, x.shape[0])
    steps = check_int("steps", steps, low=1)
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    check_generator(generator)
    t0 = path.t_min if path.t_min > 0 else 1e-5          # linear path: eps from x0 is singular at t = 0
    ts = torch.linspace(t0, path.t_max, steps + 1, dtype=torch.float64).tolist()
    mids = [(a + b) / 2 for a, b in zip(ts[:-1], ts[1:])]
    C, Cm = coefficients(path, ts), coefficients(path, mids)
    call = ModelCaller(model, cond, x.shape, x.device)
    z = None
    if divergence == "hutchinson":
        z = randn(x.shape, generator, device=x.device, dtype=x.dtype).sign()       # Rademacher probe

    def rhs(x, t, c, i):
        """(u, div u) at (x, t)."""
        with torch.enable_grad():
            xi = x.detach().requires_grad_(True)
            x0, eps = to_pair(call(xi, t, i), xi, prediction, *c)
            u = c[2] * x0 + c[3] * eps
            if z is not None:
                div = (torch.autograd.grad(u, xi, z)[0] * z).flatten(1).sum(1)
            else:
                flat = u.flatten(1)
                div = sum(torch.autograd.grad(flat[:, d].sum(), xi, retain_graph=d + 1 < flat.shape[1])[0].flatten(1)[:, d]
                          for d in range(flat.shape[1]))
        return u.detach(), div.detach()

    logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(steps):                               # RK4 on d[x, logdet]/dt = [u, div u]
        h = ts[i + 1] - ts[i]
        k1, d1 = rhs(x, ts[i], C[i], i)
        k2, d2 = rhs(x + h / 2 * k1, mids[i], Cm[i], i)
        k3, d3 = rhs(x + h / 2 * k2, mids[i], Cm[i], i)
        k4, d4 = rhs(x + h * k3, ts[i + 1], C[i + 1], i)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        logdet = logdet + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
    call.finish()
    s1 = C[-1][1]
    D = x[0].numel()
    log_prior = -0.5 * (x.flatten(1) ** 2).sum(1) / s1 ** 2 - D * math.log(s1) - 0.5 * D * math.log(2 * math.pi)
    return log_prior + logdet


def bits_per_dim(log_likelihood: torch.Tensor, num_dims: int) -> torch.Tensor:
    r"""Nats per sample to bits per dimension: :math:`-\log p / (D \log 2)`.

    For 8-bit images scaled to :math:`[-1, 1]`, add :math:`\log_2 127.5` per dimension (the Jacobian of the
    scaling) to compare with published numbers.

    Parameters
    ----------
    log_likelihood : torch.Tensor
        :math:`\log p(x)` in nats, any shape.
    num_dims : int
        The data dimension :math:`D`.

    Returns
    -------
    torch.Tensor
        Of ``log_likelihood``'s shape.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If ``log_likelihood`` is not a finite floating-point tensor or ``num_dims < 1``.
    """
    check_tensor("log_likelihood", log_likelihood)
    num_dims = check_int("num_dims", num_dims, low=1)
    return -log_likelihood / (num_dims * math.log(2))
