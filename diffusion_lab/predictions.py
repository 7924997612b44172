r"""What a network predicts, and how to turn one prediction into another on a Gaussian path.

On :math:`x_t = \alpha x_0 + \sigma \epsilon` every kind is a linear function of the pair
:math:`(x_0, \epsilon)` and :math:`x_t`, so each conversion goes through that pair: two formulas per kind
(to the pair, from the pair), not one per couple. The kinds:

- ``"eps"``: :math:`\epsilon`; ``"x0"``: :math:`x_0`;
- ``"v"``: :math:`v = \alpha\epsilon - \sigma x_0` (Salimans & Ho 2022, Eq. 7 generalised);
- ``"score"``: :math:`\nabla \log p_t(x_t) = -\epsilon/\sigma` (Tweedie);
- ``"velocity"``: :math:`dx_t/dt = \alpha' x_0 + \sigma' \epsilon`.
"""
from __future__ import annotations

import torch

from ._checks import check_tensor

#: The kinds of prediction a model may return, and that convert_prediction converts between.
PREDICTIONS = ("eps", "x0", "v", "score", "velocity")


def check_prediction(value, name: str = "prediction") -> str:
    if value not in PREDICTIONS:
        raise ValueError(f"{name} must be one of {PREDICTIONS}, got {value!r}")
    return value


def to_pair(pred, x, src: str, a, s, da, ds):
    """(x0, eps) from a prediction of kind src; a, s, da, ds are alpha, sigma and their derivatives."""
    if src == "eps":
        return (x - s * pred) / a, pred
    if src == "x0":
        return pred, (x - a * pred) / s
    if src == "v":                      # solve [a s; -s a] (x0, eps) = (x, v)
        n = a * a + s * s
        return (a * x - s * pred) / n, (s * x + a * pred) / n
    if src == "score":
        eps = -s * pred
        return (x - s * eps) / a, eps
    det = a * ds - s * da               # velocity: solve [a s; a' s'] (x0, eps) = (x, u)
    return (ds * x - s * pred) / det, (a * pred - da * x) / det


def from_pair(x0, eps, dst: str, a, s, da, ds):
    """A prediction of kind dst from the pair (x0, eps)."""
    if dst == "eps":
        return eps
    if dst == "x0":
        return x0
    if dst == "v":
        return a * eps - s * x0
    if dst == "score":
        return -eps / s
    return da * x0 + ds * eps


def path_coefficients(path, t, like: torch.Tensor):
    """alpha, sigma, alpha', sigma' at t (float64 on the CPU), cast to like's dtype and shaped to broadcast."""
    from .paths import check_time
    t64 = check_time(t)
    if t64.ndim == 1 and t64.shape[0] not in (1, like.shape[0]):
        raise ValueError(f"t must be a number or have shape ({like.shape[0]},), got {tuple(t64.shape)}")
    shape = (-1,) + (1,) * (like.ndim - 1) if t64.ndim else ()
    c = torch.stack([path.alpha(t64), path.sigma(t64), path.d_alpha(t64), path.d_sigma(t64)])
    c = c.to(dtype=like.dtype).to(like.device)           # cast on the CPU, then move once
    return tuple(ci.reshape(shape) for ci in c)


def convert_prediction(pred: torch.Tensor, x: torch.Tensor, t, path, src: str, dst: str) -> torch.Tensor:
    r"""Convert a model output of kind ``src`` at :math:`(x, t)` on ``path`` into kind ``dst``.

    Every kind is a linear function of the pair :math:`(x_0, \epsilon)` and :math:`x_t` (see the module notes),
    so the conversion goes through that pair. Singular where a formula divides by zero: :math:`x_0` from
    ``"eps"`` or ``"score"`` needs :math:`\alpha(t) > 0`, :math:`\epsilon` from ``"x0"`` needs :math:`\sigma(t) > 0`.

    Parameters
    ----------
    pred : torch.Tensor
        The prediction, of ``x``'s shape ``(B, ...)``.
    x : torch.Tensor
        The noisy input :math:`x_t`.
    t : float or torch.Tensor
        A time in :math:`[0, 1]`, or one per example ``(B,)``.
    path : GaussianPath
        The path.
    src, dst : {"eps", "x0", "v", "score", "velocity"}
        The kinds to convert from and to.

    Returns
    -------
    torch.Tensor
        The prediction of kind ``dst``, of ``x``'s shape.

    Raises
    ------
    ValueError
        If a kind is unknown, the shapes differ, ``t`` is out of :math:`[0, 1]` or of the wrong shape.
    TypeError
        If ``pred`` or ``x`` is not a floating-point tensor.
    """
    check_prediction(src, "src")
    check_prediction(dst, "dst")
    check_tensor("pred", pred)
    check_tensor("x", x)
    if pred.shape != x.shape:
        raise ValueError(f"pred must have x's shape {tuple(x.shape)}, got {tuple(pred.shape)}")
    if src == dst:
        return pred
    c = path_coefficients(path, t, x)
    return from_pair(*to_pair(pred, x, src, *c), dst, *c)
