r"""Guidance as model wrappers, so samplers never know about it.

Classifier-free guidance (Ho & Salimans 2021):
:math:`\hat\epsilon = \epsilon_\text{uncond} + s\,(\epsilon_\text{cond} - \epsilon_\text{uncond})`, where :math:`s = 1`
is the plain conditional model and :math:`s = 0` the unconditional one (the paper's :math:`w` corresponds to
:math:`s = 1 + w`). Classifier guidance (Dhariwal & Nichol 2021, Algorithm 2):
:math:`\hat\epsilon = \epsilon_\theta(x_t) - s\sqrt{1 - \bar\alpha_t}\,\nabla_x \log p_\phi(c \mid x_t, t)`.
"""
from __future__ import annotations

import torch

from ._checks import check_number, check_same_shape, check_tensor
from .schedules import Schedule, to_working


def cfg_eps(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    r"""Classifier-free guidance on two noise predictions (Ho & Salimans 2021).

    .. math:: \hat\epsilon = \epsilon_\text{uncond} + s\,(\epsilon_\text{cond} - \epsilon_\text{uncond}),

    where :math:`s = 1` is the conditional model and :math:`s = 0` the unconditional one (the paper's
    :math:`w` is :math:`s = 1 + w`; :func:`cfg_w_to_scale` converts).

    Parameters
    ----------
    eps_uncond, eps_cond : torch.Tensor
        The unconditional and conditional predictions, of one shape ``(B, ...)``.
    scale : float
        The guidance scale :math:`s`.

    Returns
    -------
    torch.Tensor
        The guided prediction, of the inputs' shape.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If a prediction is not a finite floating-point tensor, the shapes differ, or ``scale`` is not a
        finite number.
    """
    check_tensor("eps_uncond", eps_uncond)
    check_tensor("eps_cond", eps_cond)
    check_same_shape(eps_uncond=eps_uncond, eps_cond=eps_cond)
    scale = check_number("scale", scale)
    return eps_uncond + scale * (eps_cond - eps_uncond)


def cfg(model, scale: float):
    r"""Wrap a conditional model into a classifier-free-guided :math:`\epsilon`-model (Ho & Salimans 2021).

    The wrapper calls ``model`` with the labels and with ``cond=None`` and combines the two with
    :func:`cfg_eps`, so any sampler can use it unchanged.

    Parameters
    ----------
    model : callable
        ``model(x, t, cond) -> eps_hat`` that also accepts ``cond=None`` (trained with label dropout).
    scale : float
        The guidance scale :math:`s` (1: the conditional model).

    Returns
    -------
    callable
        ``guided(x, t, cond) -> eps_hat``; it raises ``ValueError`` when called with ``cond=None``.

    Raises
    ------
    TypeError
        If ``model`` is not callable, or ``scale`` is not a real number.
    ValueError
        If ``scale`` is not finite.
    """
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    scale = check_number("scale", scale)

    def guided(x, t, cond=None):
        if cond is None:
            raise ValueError("a CFG-guided model needs cond (the labels to guide towards)")
        eps_uncond = model(x, t, None)
        eps_cond = model(x, t, cond)
        check_same_shape(eps_uncond=eps_uncond, eps_cond=eps_cond)
        # cfg_eps without its finiteness checks (a device sync each): the sampler checks the result
        return eps_uncond + scale * (eps_cond - eps_uncond)
    return guided


def classifier_grad(classifier, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    r""":math:`\nabla_x \log p_\phi(c \mid x, t)` for a classifier that returns logits.

    Parameters
    ----------
    classifier : callable
        ``classifier(x, t) -> logits`` of shape ``(B, K)``.
    x : torch.Tensor
        Noisy samples, shape ``(B, ...)``.
    t : torch.Tensor
        Timesteps, shape ``(B,)``.
    cond : torch.Tensor
        Integer labels in ``[0, K-1]``, shape ``(B,)``.

    Returns
    -------
    torch.Tensor
        The gradient, of ``x``'s shape.

    Raises
    ------
    TypeError
        If ``classifier`` is not callable or ``x`` is not a floating-point tensor.
    ValueError
        If ``x`` holds NaN or inf, or the labels are not of shape ``(B,)`` or out of the logits' range.
    """
    if not callable(classifier):
        raise TypeError(f"classifier must be callable as classifier(x, t), got {type(classifier).__name__}")
    check_tensor("x", x)
    _check_labels(cond, x)
    return _classifier_grad(classifier, x, t, cond, check_range=True)


def _check_labels(cond, x):
    if not isinstance(cond, torch.Tensor) or cond.dtype.is_floating_point or cond.shape != (x.shape[0],):
        got = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
        raise ValueError(f"cond must be integer labels of shape ({x.shape[0]},), got {got}")


def _classifier_grad(classifier, x, t, cond, check_range: bool):
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        logits = classifier(x_in, t)
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"classifier must return logits of shape ({x.shape[0]}, num_classes), got {tuple(logits.shape)}")
        if check_range and (int(cond.min()) < 0 or int(cond.max()) >= logits.shape[1]):
            raise ValueError(f"cond labels must be in [0, {logits.shape[1] - 1}], got {int(cond.min())}..{int(cond.max())}")
        logp = torch.log_softmax(logits, dim=-1)
        chosen = logp[torch.arange(x.shape[0], device=x.device), cond].sum()
        return torch.autograd.grad(chosen, x_in)[0]


def classifier_guidance(model, classifier, schedule: Schedule, scale: float):
    r"""Wrap an :math:`\epsilon`-model and a noise-aware classifier into a guided :math:`\epsilon`-model.

    .. math::

       \hat\epsilon = \epsilon_\theta(x_t) - s\,\sqrt{1 - \bar\alpha_t}\;\nabla_{x_t}\log p_\phi(c \mid x_t, t)

    (Dhariwal & Nichol 2021, Algorithm 2). The labels' range is checked the first time the wrapper sees a
    ``cond`` tensor (a sampler passes the same one every step), not every step: reading the labels would
    stall a GPU each time.

    Parameters
    ----------
    model : callable
        ``model(x, t, cond) -> eps_hat``; it is called with ``cond=None``.
    classifier : callable
        ``classifier(x, t) -> logits`` (e.g. :class:`NoisyClassifier`).
    schedule : Schedule
        The schedule both were trained with.
    scale : float
        The guidance scale :math:`s \ge 0`.

    Returns
    -------
    callable
        ``guided(x, t, cond) -> eps_hat``; it raises ``ValueError`` when called with ``cond=None``.

    Raises
    ------
    TypeError
        If ``model`` or ``classifier`` is not callable, or ``schedule`` is not a :class:`Schedule`.
    ValueError
        If ``scale`` is negative.
    """
    if not callable(model) or not callable(classifier):
        raise TypeError("model and classifier must be callable")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a diffusion_lab Schedule, got {type(schedule).__name__}")
    scale = check_number("scale", scale, low=0)
    sqrt_1m_ab = (1 - schedule.alpha_bars).sqrt()      # float64 on the CPU, once
    tables = {}                                        # ... cast and moved once per (device, dtype)
    checked = []                                       # the last cond tensor whose range was checked

    def guided(x, t, cond=None):
        if cond is None:
            raise ValueError("a classifier-guided model needs cond (the labels to guide towards)")
        _check_labels(cond, x)
        new = not checked or checked[0] is not cond
        eps = model(x, t, None)
        grad = _classifier_grad(classifier, x, t, cond, check_range=new)
        if new:
            checked[:] = [cond]
        key = (x.device, x.dtype)
        if key not in tables:
            tables[key] = to_working(sqrt_1m_ab, x)
        return eps - scale * schedule.at(tables[key], t, x) * grad
    return guided
