"""Conversions between the notations the seeds mix: DDPM's alpha_bar (Ho et al. 2020, Eq. 4),
Su's square-root notation (seed 001: alpha_bar_su^2 + beta_bar_su^2 = 1), the sigma form
x_t / sqrt(alpha_bar) = x_0 + sigma eps, CFG's w (Ho & Salimans 2021) and Langevin step sizes.

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
    """DDPM alpha_bar -> seed 001's (alpha_bar_su, beta_bar_su) = (sqrt(alpha_bar), sqrt(1 - alpha_bar)).

    The same map turns a per-step DDPM alpha_t = 1 - beta_t into Su's (alpha_t, beta_t), whose
    squares sum to 1. alpha_bar must lie in [0, 1].
    """
    a, is_t = _check_values("alpha_bar", alpha_bar, low=0, high=1)
    a64 = _f64(a, is_t)
    return _back(_sqrt(a64, is_t), a, is_t), _back(_sqrt(1 - a64, is_t), a, is_t)


def su_to_alpha_bar(alpha_bar_su, beta_bar_su=None):
    """Seed 001's alpha_bar_su (a square root) -> DDPM alpha_bar = alpha_bar_su^2.

    If beta_bar_su is given too, it must satisfy alpha_bar_su^2 + beta_bar_su^2 = 1 (to 1e-6).
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
    """DDPM alpha_bar -> sigma = sqrt((1 - alpha_bar) / alpha_bar), so that
    x_t / sqrt(alpha_bar) = x_0 + sigma eps (the variance-exploding view). alpha_bar in (0, 1]."""
    a, is_t = _check_values("alpha_bar", alpha_bar, low=0, high=1, low_open=True)
    a64 = _f64(a, is_t)
    return _back(_sqrt((1 - a64) / a64, is_t), a, is_t)


def sigma_to_alpha_bar(sigma):
    """sigma -> DDPM alpha_bar = 1 / (1 + sigma^2), the inverse of alpha_bar_to_sigma. sigma >= 0."""
    s, is_t = _check_values("sigma", sigma, low=0)
    s64 = _f64(s, is_t)
    return _back(1 / (1 + s64 ** 2), s, is_t)


# --------------------------------------------------------------------------- guidance
def cfg_w_to_scale(w):
    """Ho & Salimans' guidance weight w -> this library's scale = 1 + w, used as
    eps_u + scale (eps_c - eps_u) = (1 + w) eps_c - w eps_u (see guidance.cfg_eps)."""
    w, is_t = _check_values("w", w)
    return 1 + w


def cfg_scale_to_w(scale):
    """This library's guidance scale -> Ho & Salimans' w = scale - 1 (scale = 1: plain conditional, w = 0)."""
    scale, is_t = _check_values("scale", scale)
    return scale - 1


# --------------------------------------------------------------------------- Langevin
def langevin_eta_to_delta(eta):
    """Seed 002's step eta (x += eta score + sqrt(2 eta) xi) -> seed 003's / SGLD's delta = 2 eta
    (x += delta/2 score + sqrt(delta) xi). eta > 0."""
    eta, is_t = _check_values("eta", eta, low=0, low_open=True)
    return 2 * eta


def langevin_delta_to_eta(delta):
    """Seed 003's / SGLD's step delta -> seed 002's eta = delta / 2 (dl.langevin_sample's step_size). delta > 0."""
    delta, is_t = _check_values("delta", delta, low=0, low_open=True)
    return delta / 2
