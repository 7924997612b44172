"""Guidance as model wrappers, so samplers never know about it.

Classifier-free guidance (Ho & Salimans 2021): eps = eps_uncond + scale (eps_cond - eps_uncond),
where scale = 1 is the plain conditional model and scale = 0 the unconditional one (the paper's
w corresponds to scale = 1 + w). Classifier guidance (Dhariwal & Nichol 2021, Algorithm 2):
eps = eps_theta(x_t) - s sqrt(1 - alpha_bar_t) grad_x log p_phi(c | x_t, t).
"""
from __future__ import annotations

import torch

from ._checks import check_number, check_same_shape, check_tensor
from .schedules import Schedule, to_working


def cfg_eps(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """eps_uncond + scale * (eps_cond - eps_uncond); scale = 1 is the conditional model."""
    check_tensor("eps_uncond", eps_uncond)
    check_tensor("eps_cond", eps_cond)
    check_same_shape(eps_uncond=eps_uncond, eps_cond=eps_cond)
    scale = check_number("scale", scale)
    return eps_uncond + scale * (eps_cond - eps_uncond)


def cfg(model, scale: float):
    """Wrap a conditional model (one that also accepts cond=None) into a guided epsilon model."""
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
    """grad_x log p_phi(cond | x, t) for a classifier returning logits classifier(x, t)."""
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
    """Wrap an epsilon model and a noise-aware classifier into a guided epsilon model.

    The labels' range is checked the first time the wrapper sees a cond tensor (a sampler passes the
    same one every step), not every step: reading the labels would stall a GPU each time."""
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
