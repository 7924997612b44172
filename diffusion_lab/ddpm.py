"""DDPM: the simplified epsilon loss (Ho et al. 2020, Eq. 14 / Algorithm 1) and ancestral
sampling (Algorithm 2). The model contract is model(x, t, cond=None) -> eps_hat."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ._checks import (FiniteWatch, check_callback, check_generator, check_noise, check_number, check_same_shape,
                      check_shape, check_tensor, randn)
from .forward import _check_schedule, _q_sample
from .schedules import Schedule, to_working


def _check_model(model):
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, t, cond=None), got {type(model).__name__}")


def _check_cond(cond, batch: int):
    if cond is None:
        return
    if not isinstance(cond, torch.Tensor) or cond.dtype.is_floating_point or cond.ndim != 1 or cond.shape[0] != batch:
        shape = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
        raise ValueError(f"cond must be None or an integer tensor of labels with shape ({batch},), got {shape}")


def model_device(model, device=None) -> torch.device:
    """The device to sample on: `device` if given, else the model's parameters', else the CPU."""
    if device is not None:
        return torch.device(device)
    if isinstance(model, torch.nn.Module):
        p = next(model.parameters(), None)
        if p is not None:
            return p.device
    return torch.device("cpu")


def _call(model, x, tt, cond):
    """model(x, tt, cond) with its output's shape checked (metadata only: no device sync)."""
    eps = model(x, tt, cond)
    if not isinstance(eps, torch.Tensor) or eps.shape != x.shape:
        got = tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
        raise ValueError(f"model output must have the input's shape {tuple(x.shape)}, got {got}")
    return eps


def model_watch(device) -> FiniteWatch:
    """The samplers' NaN check on the model's output; `where` is (step index, t)."""
    return FiniteWatch(device, lambda w: f"model output at step {w[0]} (t = {w[1]}) is not finite (NaN or inf): "
                                         f"the model is broken or diverged")


def ddpm_loss(model, schedule: Schedule, x0: torch.Tensor, cond=None, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""The simplified DDPM loss (Ho et al. 2020, Eq. 14; Algorithm 1).

    .. math::

       L_\text{simple} = \mathbb E_{t, \epsilon}\,\big\|\epsilon - \epsilon_\theta\big(\sqrt{\bar\alpha_t}\,x_0
       + \sqrt{1 - \bar\alpha_t}\,\epsilon,\ t\big)\big\|^2, \qquad t \sim \mathcal U\{0, \dots, T-1\},

    one :math:`(t, \epsilon)` per example, averaged over the batch and the elements.

    Parameters
    ----------
    model : callable
        ``model(x, t, cond) -> eps_hat`` (the model contract).
    schedule : Schedule
        The variance schedule.
    x0 : torch.Tensor
        A batch of data, shape ``(B, ...)``.
    cond : torch.Tensor, optional
        Integer labels, shape ``(B,)``, passed to the model.
    generator : torch.Generator, optional
        Source of ``t`` and :math:`\epsilon`.

    Returns
    -------
    torch.Tensor
        The scalar loss (differentiable in the model's parameters).

    Raises
    ------
    TypeError
        If ``model`` is not callable, ``schedule`` is not a :class:`Schedule`, a tensor argument is not a
        floating-point tensor, or ``generator`` is not a ``torch.Generator``.
    ValueError
        If an argument is out of range or of the wrong shape, or a tensor (input or model output) holds
        NaN or inf.
    """
    _check_model(model)
    _check_schedule(schedule)
    check_tensor("x0", x0)
    _check_cond(cond, x0.shape[0])
    check_generator(generator)
    return _ddpm_loss(model, schedule, x0, cond, generator)


def _ddpm_loss(model, schedule: Schedule, x0, cond, generator, tables=None) -> torch.Tensor:
    """ddpm_loss without the checks, for training loops (no device-to-host sync). t is drawn on the
    generator's device; the coefficients are gathered there from float64 tables, then cast and moved."""
    gen_device = generator.device if generator is not None else x0.device
    t_gen = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator, device=gen_device)
    t = t_gen.to(x0.device, non_blocking=True)
    noise = randn(x0.shape, generator, device=x0.device, dtype=x0.dtype)
    xt = _q_sample(schedule, x0, t_gen, noise, tables)
    eps_hat = model(xt, t, cond)
    return torch.mean((eps_hat - noise) ** 2)


def ddpm_step(schedule: Schedule, xt: torch.Tensor, eps: torch.Tensor, t: int, noise: torch.Tensor | None = None,
              variance: str = "posterior", clip_x0: float | None = None):
    r"""One ancestral step :math:`x_t \to x_{t-1}` (Ho et al. 2020, Algorithm 2).

    .. math::

       \mu = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1 - \bar\alpha_t}}\,\epsilon\Big),
       \qquad x_{t-1} = \mu + \sigma_t z,

    which equals the mean of the posterior :math:`q(x_{t-1} \mid x_t, \hat x_0)`. At ``t = 0`` the step
    returns the mean (no noise).

    Parameters
    ----------
    schedule : Schedule
        The variance schedule.
    xt : torch.Tensor
        The current samples, shape ``(B, ...)``.
    eps : torch.Tensor
        The model's noise prediction at ``(xt, t)``, of ``xt``'s shape.
    t : int
        The current timestep, in ``[0, T-1]`` (one for the whole batch).
    noise : torch.Tensor, optional
        :math:`z \sim \mathcal N(0, I)` of ``xt``'s shape; required for :math:`t \ge 1`.
    variance : {"posterior", "beta"}, optional
        :math:`\sigma_t^2 = \tilde\beta_t` (default) or :math:`\beta_t`.
    clip_x0 : float, optional
        If given, :math:`\hat x_0` is clamped to ``[-clip_x0, clip_x0]`` and the mean taken from the
        posterior at the clamped :math:`\hat x_0`.

    Returns
    -------
    x_prev : torch.Tensor
        :math:`x_{t-1}`, of ``xt``'s shape.
    x0_hat : torch.Tensor
        The predicted :math:`\hat x_0`.

    Raises
    ------
    TypeError
        If ``model`` is not callable, ``schedule`` is not a :class:`Schedule`, a tensor argument is not a
        floating-point tensor, or ``generator`` is not a ``torch.Generator``.
    ValueError
        If an argument is out of range or of the wrong shape, or a tensor (input or model output) holds
        NaN or inf.
    """
    _check_variance(variance)
    _check_schedule(schedule)
    t = schedule.check_t(t)
    if t.ndim != 0:
        raise ValueError(f"t must be a single integer timestep for ddpm_step, got shape {tuple(t.shape)}")
    t = int(t)
    check_tensor("xt", xt)
    check_tensor("eps", eps)
    check_same_shape(xt=xt, eps=eps)
    if t > 0:
        check_noise(noise, xt, "noise is required for t >= 1 (pass a standard normal tensor of the input's shape)")
    coef = _ddpm_coefficients(schedule, variance, xt, torch.tensor([t]))[0]
    return _ddpm_update(coef, xt, eps, noise if t > 0 else None, clip_x0)


def _check_variance(variance):
    if variance not in ("posterior", "beta"):
        raise ValueError(f"variance must be 'posterior' or 'beta', got {variance!r}")


def _ddpm_coefficients(schedule: Schedule, variance: str, like: torch.Tensor, ts: torch.Tensor) -> list:
    """Per timestep in ts (CPU integers), the step's five coefficients as 0-dim tensors in like's dtype on
    like's device: computed in float64 on the CPU for the whole schedule, gathered, cast once, moved once."""
    ab, ab_prev, beta = schedule.alpha_bars, schedule.alpha_bars_prev, schedule.betas
    var = schedule.posterior_variances if variance == "posterior" else beta
    table = torch.stack([(1 - ab).sqrt(), ab.sqrt(),            # predict_x0 (Eq. 4 inverted)
                         beta * ab_prev.sqrt() / (1 - ab),      # c0 and ct of the posterior mean (Eq. 7)
                         (1 - ab_prev) * (1 - beta).sqrt() / (1 - ab), var])
    co = to_working(table[:, ts], like)                          # (5, steps)
    co = torch.cat([co[:4], co[4:].sqrt()])                      # standard deviation, in the working dtype
    return [tuple(c.unbind(0)) for c in co.unbind(1)]


def _ddpm_update(coef, xt, eps, noise, clip_x0):
    """The ancestral step from precomputed coefficients (no checks). Returns (x_prev, x0_hat)."""
    sqrt_1m_ab, sqrt_ab, c0, ct, sd = coef
    x0_hat = (xt - sqrt_1m_ab * eps) / sqrt_ab
    if clip_x0 is not None:
        x0_hat = x0_hat.clamp(-clip_x0, clip_x0)
    mean = c0 * x0_hat + ct * xt                                  # posterior mean at x0_hat (Eq. 7)
    if noise is None:                                             # t = 0: the mean, no noise
        return mean, x0_hat
    return mean + sd * noise, x0_hat


@torch.no_grad()
def ddpm_sample(model, schedule: Schedule, shape, cond=None, generator: torch.Generator | None = None, callback=None,
                *, xT: torch.Tensor | None = None, device=None, variance: str = "posterior",
                clip_x0: float | None = None, progress: bool = False) -> torch.Tensor:
    r"""Ancestral sampling from :math:`x_T \sim \mathcal N(0, I)` down to :math:`x_0` (Ho et al. 2020, Algorithm 2).

    ``T`` model calls, each followed by :func:`ddpm_step`.

    Parameters
    ----------
    model : callable
        ``model(x, t, cond) -> eps_hat`` (the model contract); wrap it with :func:`cfg` or
        :func:`classifier_guidance` to guide.
    schedule : Schedule
        The variance schedule the model was trained with.
    shape : tuple of int
        The output shape ``(B, ...)``.
    cond : torch.Tensor, optional
        Integer labels, shape ``(B,)``.
    generator : torch.Generator, optional
        Source of :math:`x_T` and of every step's noise.
    callback : callable, optional
        Called after every step with a dict ``{"i": step index, "t": t, "x": x_{t-1}, "x0_hat": predicted x0}``.
    xT : torch.Tensor, optional
        A starting point of shape ``shape`` instead of a fresh draw.
    device : torch.device or str, optional
        Where to sample (default: the model's parameters' device, else the CPU).
    variance : {"posterior", "beta"}, optional
        The reverse variance (see :func:`ddpm_step`).
    clip_x0 : float, optional
        Clamp :math:`\hat x_0` to ``[-clip_x0, clip_x0]`` at every step.
    progress : bool, optional
        Show a progress bar (default ``False``).

    Returns
    -------
    torch.Tensor
        Samples :math:`x_0`, of shape ``shape``.

    Raises
    ------
    TypeError
        If ``model`` is not callable, ``schedule`` is not a :class:`Schedule`, a tensor argument is not a
        floating-point tensor, or ``generator`` is not a ``torch.Generator``.
    ValueError
        If an argument is out of range or of the wrong shape, or a tensor (input or model output) holds
        NaN or inf.
    """
    _check_model(model)
    _check_schedule(schedule)
    shape = check_shape("shape", shape)
    _check_cond(cond, shape[0])
    check_callback(callback)
    check_generator(generator)
    _check_variance(variance)
    if clip_x0 is not None:
        clip_x0 = check_number("clip_x0", clip_x0, low=0, low_open=True)
    device = model_device(model, device)
    x = randn(shape, generator, device=device) if xT is None else check_tensor("xT", xT).to(device)
    if x.shape != shape:
        raise ValueError(f"xT must have shape {shape}, got {tuple(x.shape)}")
    # Everything a step needs, once per call: coefficients (float64 on the CPU, cast once, moved once)
    # and the timestep tensors; the loop is the network plus a few tensor operations.
    ts = list(range(schedule.T - 1, -1, -1))
    coefs = _ddpm_coefficients(schedule, variance, x, torch.tensor(ts))
    watch = model_watch(device)
    for i, t in enumerate(tqdm(ts, desc="DDPM", disable=not progress)):
        tt = torch.full((shape[0],), t, device=device, dtype=torch.long)
        eps = _call(model, x, tt, cond)
        watch.check(eps, (i, t))
        noise = randn(shape, generator, device=device, dtype=x.dtype) if t > 0 else None
        x, x0_hat = _ddpm_update(coefs[i], x, eps, noise, clip_x0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0_hat": x0_hat})
    watch.done()
    return x
