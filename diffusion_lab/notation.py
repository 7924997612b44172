r"""Conversions between the notations the seeds mix: DDPM's :math:`\bar\alpha` (Ho et al. 2020, Eq. 4),
Su's square-root notation (seed 001: :math:`\bar\alpha_\text{su}^2 + \bar\beta_\text{su}^2 = 1`), the sigma form
:math:`x_t/\sqrt{\bar\alpha} = x_0 + \sigma\epsilon`, CFG's :math:`w` (Ho & Salimans 2021) and Langevin step sizes.

Every function takes a Python number or a floating-point tensor and returns the same kind.
"""
from __future__ import annotations

import math

import torch

from ._checks import check_broadcastable, check_number, check_tensor


def _check_values(name: str, x, *, low=None, high=None, low_open=False, high_open=False):
    """Validate a number or a tensor elementwise; return (value, is_tensor)."""
    if not isinstance(x, torch.Tensor) or (x.ndim == 0 and not torch.is_floating_point(x)):
        return check_number(name, x, low=low, high=high, low_open=low_open, high_open=high_open), False
    check_tensor(name, x)
    if x.numel() == 0:
        return x, True
    lo, hi = x.min().item(), x.max().item()
    bad_low = low is not None and (lo < low or (low_open and lo == low))
    bad_high = high is not None and (hi > high or (high_open and hi == high))
    if bad_low or bad_high:
        allowed = (f"{'(' if low_open else '['}{'-inf' if low is None else low}, "
                   f"{'inf' if high is None else high}{')' if high_open else ']'}")
        raise ValueError(f"every entry of {name} must be in {allowed}, got values from {lo} to {hi}")
    return x, True


def _sqrt(x, is_tensor):
    return x.sqrt() if is_tensor else math.sqrt(x)


def _f64(x, is_tensor):
    """Work in float64 (then cast back): 1 - alpha_bar near alpha_bar = 1 loses digits in float32."""
    return x.to(torch.float64) if is_tensor else x


def _back(y, like, is_tensor):
    return y.to(like.dtype) if is_tensor else float(y)


# --------------------------------------------------------------------------- Su's notation
def alpha_bar_to_su(alpha_bar):
    r"""DDPM's :math:`\bar\alpha` to seed 001's square-root pair :math:`(\bar\alpha_\text{su}, \bar\beta_\text{su})`.

    .. math:: (\bar\alpha_\text{su}, \bar\beta_\text{su}) = \big(\sqrt{\bar\alpha}, \sqrt{1 - \bar\alpha}\big)

    The same map turns a per-step DDPM :math:`\alpha_t = 1 - \beta_t` into Su's :math:`(\alpha_t, \beta_t)`,
    whose squares sum to 1.

    Parameters
    ----------
    alpha_bar : float or torch.Tensor
        :math:`\bar\alpha \in [0, 1]`.

    Returns
    -------
    float or torch.Tensor
        The pair ``(alpha_bar_su, beta_bar_su)``. Of the same kind as the input (a tensor keeps its dtype).

    Raises
    ------
    TypeError
        If the input is neither a real number nor a floating-point tensor.
    ValueError
        If a value is outside :math:`[0, 1]`, or NaN.
    """
    a, is_t = _check_values("alpha_bar", alpha_bar, low=0, high=1)
    a64 = _f64(a, is_t)
    return _back(_sqrt(a64, is_t), a, is_t), _back(_sqrt(1 - a64, is_t), a, is_t)


def su_to_alpha_bar(alpha_bar_su, beta_bar_su=None):
    r"""Seed 001's :math:`\bar\alpha_\text{su}` (a square root) to DDPM's :math:`\bar\alpha = \bar\alpha_\text{su}^2`.

    Parameters
    ----------
    alpha_bar_su : float or torch.Tensor
        :math:`\bar\alpha_\text{su} \in [0, 1]`.
    beta_bar_su : float or torch.Tensor, optional
        If given, it must satisfy :math:`\bar\alpha_\text{su}^2 + \bar\beta_\text{su}^2 = 1` (to 1e-6), and be of
        the same kind as ``alpha_bar_su``.

    Returns
    -------
    float or torch.Tensor
        :math:`\bar\alpha`, of the same kind as the input.

    Raises
    ------
    TypeError
        If the inputs are not numbers or floating-point tensors, or one is a number and the other a tensor.
    ValueError
        If a value is out of range, or :math:`\bar\alpha_\text{su}^2 + \bar\beta_\text{su}^2 \ne 1`.
    """
    a, is_t = _check_values("alpha_bar_su", alpha_bar_su, low=0, high=1)
    if beta_bar_su is not None:
        b, b_is_t = _check_values("beta_bar_su", beta_bar_su, low=0, high=1)
        if b_is_t != is_t:
            raise TypeError("alpha_bar_su and beta_bar_su must both be numbers or both be tensors")
        if is_t:
            check_broadcastable(alpha_bar_su=a, beta_bar_su=b)
        total = _f64(a, is_t) ** 2 + _f64(b, is_t) ** 2
        if is_t:
            worst = (total - 1).abs().max().item() if total.numel() else 0.0
        else:
            worst = abs(total - 1)
        if worst > 1e-6:
            raise ValueError(f"alpha_bar_su^2 + beta_bar_su^2 must equal 1, got a deviation of {worst:.3g}")
    return _back(_f64(a, is_t) ** 2, a, is_t)


# --------------------------------------------------------------------------- sigma form
def alpha_bar_to_sigma(alpha_bar):
    r"""DDPM's :math:`\bar\alpha` to the variance-exploding :math:`\sigma = \sqrt{(1 - \bar\alpha)/\bar\alpha}`.

    With it :math:`x_t / \sqrt{\bar\alpha} = x_0 + \sigma\epsilon` (the sigma form).

    Parameters
    ----------
    alpha_bar : float or torch.Tensor
        :math:`\bar\alpha \in (0, 1]`.

    Returns
    -------
    float or torch.Tensor
        :math:`\sigma \ge 0`. Of the same kind as the input (a tensor keeps its dtype).

    Raises
    ------
    TypeError
        If the input is neither a real number nor a floating-point tensor.
    ValueError
        If a value is outside :math:`(0, 1]`, or NaN.
    """
    a, is_t = _check_values("alpha_bar", alpha_bar, low=0, high=1, low_open=True)
    a64 = _f64(a, is_t)
    return _back(_sqrt((1 - a64) / a64, is_t), a, is_t)


def sigma_to_alpha_bar(sigma):
    r"""The sigma form's :math:`\sigma` to DDPM's :math:`\bar\alpha = 1/(1 + \sigma^2)`, the inverse of :func:`alpha_bar_to_sigma`.

    Parameters
    ----------
    sigma : float or torch.Tensor
        :math:`\sigma \ge 0`.

    Returns
    -------
    float or torch.Tensor
        :math:`\bar\alpha \in (0, 1]`. Of the same kind as the input (a tensor keeps its dtype).

    Raises
    ------
    TypeError
        If the input is neither a real number nor a floating-point tensor.
    ValueError
        If a value is outside :math:`[0, \infty)`, or NaN.
    """
    s, is_t = _check_values("sigma", sigma, low=0)
    s64 = _f64(s, is_t)
    return _back(1 / (1 + s64 ** 2), s, is_t)


# --------------------------------------------------------------------------- guidance
def cfg_w_to_scale(w):
    r"""Ho & Salimans' (2021) guidance weight :math:`w` to this library's scale :math:`s = 1 + w`.

    Used as :math:`\epsilon_u + s(\epsilon_c - \epsilon_u) = (1 + w)\,\epsilon_c - w\,\epsilon_u` (see :func:`cfg_eps`).

    Parameters
    ----------
    w : float or torch.Tensor
        The paper's weight :math:`w`.

    Returns
    -------
    float or torch.Tensor
        The scale :math:`s`. Of the same kind as the input (a tensor keeps its dtype).

    Raises
    ------
    TypeError
        If the input is neither a real number nor a floating-point tensor.
    ValueError
        If a value is NaN or infinite.
    """
    w, is_t = _check_values("w", w)
    return 1 + w


def cfg_scale_to_w(scale):
    """This library's guidance scale :math:`s` to Ho & Salimans' :math:`w = s - 1`.

    :math:`s = 1` is the plain conditional model, :math:`w = 0`.

    Parameters
    ----------
    scale : float or torch.Tensor
        The scale :math:`s`.

    Returns
    -------
    float or torch.Tensor
        The paper's :math:`w`. Of the same kind as the input (a tensor keeps its dtype).

    Raises
    ------
    TypeError
        If the input is neither a real number nor a floating-point tensor.
    ValueError
        If a value is NaN or infinite.
    """
    scale, is_t = _check_values("scale", scale)
    return scale - 1


# --------------------------------------------------------------------------- Langevin
def langevin_eta_to_delta(eta):
    r"""Seed 002's Langevin step :math:`\eta` to seed 003's / SGLD's :math:`\delta = 2\eta`.

    Seed 002 writes :math:`x \mathrel{+}= \eta\,\nabla\log p + \sqrt{2\eta}\,\xi`, seed 003 and SGLD
    :math:`x \mathrel{+}= \tfrac{\delta}{2}\nabla\log p + \sqrt{\delta}\,\xi`.

    Parameters
    ----------
    eta : float or torch.Tensor
        :math:`\eta > 0`.

    Returns
    -------
    float or torch.Tensor
        :math:`\delta`. Of the same kind as the input (a tensor keeps its dtype).

    Raises
    ------
    TypeError
        If the input is neither a real number nor a floating-point tensor.
    ValueError
        If a value is outside :math:`(0, \infty)`, or NaN.
    """
    eta, is_t = _check_values("eta", eta, low=0, low_open=True)
    return 2 * eta


def langevin_delta_to_eta(delta):
    r"""Seed 003's / SGLD's Langevin step :math:`\delta` to seed 002's :math:`\eta = \delta/2` (:func:`langevin_sample`'s ``step_size``).

    Parameters
    ----------
    delta : float or torch.Tensor
        :math:`\delta > 0`.

    Returns
    -------
    float or torch.Tensor
        :math:`\eta`. Of the same kind as the input (a tensor keeps its dtype).

    Raises
    ------
    TypeError
        If the input is neither a real number nor a floating-point tensor.
    ValueError
        If a value is outside :math:`(0, \infty)`, or NaN.
    """
    delta, is_t = _check_values("delta", delta, low=0, low_open=True)
    return delta / 2
