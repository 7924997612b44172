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
    r"""A draw from :math:`q(x_t \mid x_0)` in closed form (Ho et al. 2020, Eq. 4).

    .. math:: x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\,\epsilon

    Parameters
    ----------
    schedule : Schedule
        The variance schedule.
    x0 : torch.Tensor
        Clean data, shape ``(B, ...)``.
    t : int or torch.Tensor
        One timestep for the batch, or one per example, shape ``(B,)``, in ``[0, T-1]``.
    noise : torch.Tensor
        :math:`\epsilon \sim \mathcal N(0, I)`, of ``x0``'s shape and device.

    Returns
    -------
    torch.Tensor
        :math:`x_t`, of ``x0``'s shape and dtype.

    Raises
    ------
    TypeError
        If ``schedule`` is not a :class:`Schedule`, or a tensor argument is not a floating-point tensor.
    ValueError
        If a tensor holds NaN or inf, the shapes or devices differ, or ``t`` is out of range.
    """
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
    r"""Invert Eq. 4 of Ho et al. (2020) for :math:`x_0`, given the noise.

    .. math:: \hat x_0 = \big(x_t - \sqrt{1 - \bar\alpha_t}\,\epsilon\big) / \sqrt{\bar\alpha_t}

    Parameters
    ----------
    schedule : Schedule
        The variance schedule.
    xt : torch.Tensor
        Noisy samples, shape ``(B, ...)``.
    eps : torch.Tensor
        The (predicted) noise, of ``xt``'s shape.
    t : int or torch.Tensor
        One timestep, or one per example, shape ``(B,)``.

    Returns
    -------
    torch.Tensor
        :math:`\hat x_0`, of ``xt``'s shape.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        As for :func:`q_sample`.
    """
    _check_schedule(schedule)
    check_tensor("xt", xt)
    check_tensor("eps", eps)
    check_same_shape(xt=xt, eps=eps)
    t = schedule.check_t(t)
    _check_batch_t(t, xt)
    ab = schedule.alpha_bars
    return (xt - schedule.at((1 - ab).sqrt(), t, xt) * eps) / schedule.at(ab.sqrt(), t, xt)


def posterior_coefficients(schedule: Schedule, t, like: torch.Tensor):
    r"""The coefficients of the forward posterior :math:`q(x_{t-1} \mid x_t, x_0) = \mathcal N(c_0 x_0 + c_t x_t, v)`.

    .. math::

       c_0 = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1 - \bar\alpha_t}, \quad
       c_t = \frac{\sqrt{\alpha_t}\,(1 - \bar\alpha_{t-1})}{1 - \bar\alpha_t}, \quad
       v = \tilde\beta_t

    (Ho et al. 2020, Eq. 7); at ``t = 0``, :math:`c_0 = 1`, :math:`c_t = 0`, :math:`v = 0`. Computed in
    float64 on the whole schedule, then gathered and cast to ``like``'s dtype.

    Parameters
    ----------
    schedule : Schedule
        The variance schedule.
    t : int or torch.Tensor
        One timestep, or one per example, shape ``(B,)``.
    like : torch.Tensor
        A tensor of shape ``(B, ...)`` giving the dtype, device and broadcast shape.

    Returns
    -------
    tuple of torch.Tensor
        ``(c0, ct, var)``, each broadcastable against ``like`` (see :meth:`Schedule.at`).

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If ``schedule`` is not a :class:`Schedule` or ``t`` is not a valid timestep.
    """
    _check_schedule(schedule)
    t = schedule.check_t(t)
    ab, ab_prev, beta = schedule.alpha_bars, schedule.alpha_bars_prev, schedule.betas
    c0 = beta * ab_prev.sqrt() / (1 - ab)          # Ho et al. 2020, Eq. 7
    ct = (1 - ab_prev) * (1 - beta).sqrt() / (1 - ab)
    return schedule.at(c0, t, like), schedule.at(ct, t, like), schedule.at(schedule.posterior_variances, t, like)


def q_posterior(schedule: Schedule, x0: torch.Tensor, xt: torch.Tensor, t):
    r"""Mean and variance of :math:`q(x_{t-1} \mid x_t, x_0)` for :math:`t \ge 1` (Ho et al. 2020, Eqs. 6-7).

    Parameters
    ----------
    schedule : Schedule
        The variance schedule.
    x0, xt : torch.Tensor
        Clean and noisy samples, of one shape ``(B, ...)`` and device.
    t : int or torch.Tensor
        One timestep in ``[1, T-1]``, or one per example, shape ``(B,)``.

    Returns
    -------
    mean : torch.Tensor
        :math:`\tilde\mu_t(x_t, x_0)`, of ``x0``'s shape.
    variance : torch.Tensor
        :math:`\tilde\beta_t`, broadcastable against ``x0`` (shape ``(B, 1, ...)`` for tensor ``t``, a
        scalar for int ``t``).

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        As for :func:`q_sample`; also if ``t`` is 0.
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
