"""DDIM: the non-Markovian sigma_t family and few-step sampling (Song et al. 2021a, Eqs. 12 and 16)."""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ._checks import (check_callback, check_generator, check_int, check_noise, check_number, check_same_device, check_shape,
                      check_tensor, randn)
from .ddpm import _call, _check_cond, _check_model, model_device, model_watch
from .forward import _check_schedule
from .schedules import Schedule, to_working


def ddim_timesteps(T: int, steps: int, spacing: str = "trailing") -> list[int]:
    """A decreasing sub-sequence of ``steps`` timesteps in ``[0, T-1]`` for few-step sampling.

    Parameters
    ----------
    T : int
        Number of timesteps of the schedule, at least 1.
    steps : int
        How many to keep, in ``[1, T]``.
    spacing : {"trailing", "leading"}, optional
        ``"trailing"`` (default) starts at ``T-1``: ``round(T - k T / steps) - 1`` for ``k = 0, ..., steps-1``,
        computed as diffusers computes ``timestep_spacing="trailing"`` (NumPy's float ``arange``, then
        round-half-to-even), so that the two agree at rounding ties too (e.g. ``T = 1000, steps = 48``);
        ``"leading"`` is ``[(steps-1) r, ..., r, 0]`` with ``r = T // steps`` (the DDIM paper's and
        diffusers' default).

    Returns
    -------
    list of int
        The timesteps, largest first.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If ``T`` or ``steps`` is not an integer in its range, or ``spacing`` is unknown.
    """
    T = check_int("T", T, low=1)
    steps = check_int("steps", steps, low=1, high=T)
    if spacing == "trailing":
        # NumPy's arange, as diffusers uses: torch's float arange rounds some exact-half entries the other way
        # (T = 1000: 111 step counts differed from diffusers by one at a tie, e.g. steps = 48)
        ts = torch.from_numpy(np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1)
    elif spacing == "leading":
        ts = torch.arange(steps - 1, -1, -1) * (T // steps)
    else:
        raise ValueError(f"spacing must be 'trailing' or 'leading', got {spacing!r}")
    return [int(t) for t in ts[:steps]]


def _alpha_bar(schedule: Schedule, t):
    """alpha_bar_t in float64 on the CPU for CPU integer t, with the convention alpha_bar_{-1} = 1 (the clean data)."""
    ab = torch.cat([torch.ones(1, dtype=torch.float64), schedule.alpha_bars])
    return ab[t + 1]


_DIRECTION_VAR_TOL = 1e-12   # float64 rounding allowance for 1 - ab_prev - sigma^2 at eta = eta_max


def _sigma64(ab, ab_prev, eta):
    return eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()


def _broadcast_to(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) coefficients shaped (B, 1, ...) to broadcast against like (B, ...); 0-dim ones stay 0-dim."""
    if values.ndim == 0:
        return values
    if values.shape[0] != like.shape[0]:
        raise ValueError(f"t has {values.shape[0]} entries but the batch has {like.shape[0]}")
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def ddim_sigma(schedule: Schedule, t, t_prev, eta: float, like: torch.Tensor) -> torch.Tensor:
    r"""The DDIM noise level :math:`\sigma_t(\eta)` (Song et al. 2021a, Eq. 16).

    .. math::

       \sigma_t(\eta) = \eta\,\sqrt{\frac{1 - \bar\alpha_{t'}}{1 - \bar\alpha_t}}\,
       \sqrt{1 - \frac{\bar\alpha_t}{\bar\alpha_{t'}}}, \qquad t' = t_\text{prev}

    (:math:`\eta = 1` with :math:`t' = t - 1` gives DDPM's :math:`\sqrt{\tilde\beta_t}`).

    Parameters
    ----------
    schedule : Schedule
        The variance schedule.
    t, t_prev : int or torch.Tensor
        The current and the next timestep (``t_prev = -1``: :math:`\bar\alpha = 1`, the step to :math:`x_0`).
    eta : float
        :math:`\eta \ge 0`.
    like : torch.Tensor
        Gives dtype, device and broadcast shape.

    Returns
    -------
    torch.Tensor
        :math:`\sigma_t`, broadcastable against ``like``.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If ``eta`` is negative or not a number, or a timestep is invalid.
    """
    _check_schedule(schedule)
    eta = check_number("eta", eta, low=0)
    check_tensor("like", like)
    t, t_prev = _check_pair(schedule, t, t_prev)
    t, t_prev = torch.broadcast_tensors(t.cpu(), t_prev.cpu())
    sigma = _sigma64(_alpha_bar(schedule, t), _alpha_bar(schedule, t_prev), eta)
    return to_working(_broadcast_to(sigma, like), like)


def _ddim_coefficients(schedule: Schedule, t: torch.Tensor, t_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """Eq. 12's coefficients in float64 on the CPU for CPU integer t, t_prev of one shape:
    stacked (sqrt(1 - ab), sqrt(ab), sqrt(ab_prev), sqrt(1 - ab_prev - sigma^2), sigma)."""
    ab = _alpha_bar(schedule, t)
    ab_prev = _alpha_bar(schedule, t_prev)
    sigma = _sigma64(ab, ab_prev, eta)                     # Eq. 16
    # The direction's variance 1 - ab_prev - sigma^2 must be >= 0 for the marginal of x_{t_prev} to stay
    # N(sqrt(ab_prev) x0, 1 - ab_prev): that is eta <= sqrt((1 - ab) ab_prev / (ab_prev - ab)), a bound
    # >= 1 that tends to 1 as ab_prev -> 1 (on the last step, ab_prev = 1, sigma = 0 for every eta). At
    # eta = 1 a sweep of every pair of the linear and cosine schedules never went below 0, but at eta =
    # the bound the float64 value rounds to as low as -9e-15, so values down to -_DIRECTION_VAR_TOL count
    # as 0; anything below is a too-large eta, not rounding (1.001 x the bound gives about
    # -2e-3 (1 - ab_prev)). Checked here, on the CPU in float64: no device sync.
    direction_var = 1 - ab_prev - sigma ** 2
    bad = direction_var < -_DIRECTION_VAR_TOL
    if bool(bad.any()):
        eta_max = ((1 - ab) * ab_prev / (ab_prev - ab)).sqrt().expand_as(bad)[bad].min().item()
        raise ValueError(f"eta must be <= {eta_max:.6g} at this step (t = {t.tolist()}, t_prev = {t_prev.tolist()}) "
                         f"so that 1 - alpha_bar_prev - sigma^2 >= 0 (the marginal condition), got eta = {eta}")
    direction = direction_var.clamp(min=0).sqrt()
    return torch.stack([(1 - ab).sqrt(), ab.sqrt(), ab_prev.sqrt(), direction, sigma])


def _ddim_update(coef, xt, eps, noise, clip_x0):
    """Eq. 12 from precomputed coefficients in xt's dtype and device (no checks).
    Returns (x_prev, x0_hat before clipping)."""
    sqrt_1m_ab, sqrt_ab, sqrt_ab_prev, direction, sigma = coef
    # 1. predicted x0 (Eq. 12, first term)
    x0_hat = (xt - sqrt_1m_ab * eps) / sqrt_ab
    x0_used = x0_hat
    if clip_x0 is not None:
        # clip the prediction, then re-derive eps from it so that both terms of Eq. 12 agree (as
        # GLIDE does; diffusers' use_clipped_model_output=True). Keeping the raw eps, diffusers'
        # default, turned classifier-free-guided digits at scale 3 into noise.
        x0_used = x0_hat.clamp(-clip_x0, clip_x0)
        eps = (xt - sqrt_ab * x0_used) / sqrt_1m_ab
    # 2.-3. sqrt(ab_prev) x0_hat + the direction pointing to x_t (Eq. 12, second term)
    x_prev = sqrt_ab_prev * x0_used + direction * eps
    # 4. random noise (Eq. 12, third term)
    if noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev, x0_hat


def _check_pair(schedule, t, t_prev):
    t = schedule.check_t(t)
    if isinstance(t_prev, torch.Tensor):
        if t_prev.dtype.is_floating_point:
            raise TypeError(f"t_prev must hold integer timesteps, got dtype {t_prev.dtype}")
        t_prev = t_prev.long()
    else:
        t_prev = torch.tensor(check_int("t_prev", t_prev, low=-1, high=schedule.T - 2))
    if t_prev.numel() and (int(t_prev.min()) < -1):
        raise ValueError(f"t_prev must be >= -1 (-1 means the clean data x_0), got {int(t_prev.min())}")
    if bool((t_prev >= t).any()):
        raise ValueError(f"t_prev must be smaller than t, got t = {t.tolist()} and t_prev = {t_prev.tolist()}")
    return t, t_prev


def ddim_step(schedule: Schedule, xt: torch.Tensor, eps: torch.Tensor, t, t_prev, eta: float = 0.0,
              noise: torch.Tensor | None = None, clip_x0: float | None = None) -> torch.Tensor:
    r"""One DDIM step :math:`x_t \to x_{t_\text{prev}}` (Song et al. 2021a, Eq. 12).

    .. math::

       x_{t'} = \sqrt{\bar\alpha_{t'}}\,\hat x_0 + \sqrt{1 - \bar\alpha_{t'} - \sigma_t^2}\,\epsilon + \sigma_t z,
       \qquad \hat x_0 = \frac{x_t - \sqrt{1 - \bar\alpha_t}\,\epsilon}{\sqrt{\bar\alpha_t}}.

    ``eta = 0`` is deterministic DDIM; ``eta = 1`` with ``t_prev = t - 1`` is DDPM's ancestral step with
    the posterior variance. An ``eta`` so large that :math:`1 - \bar\alpha_{t'} - \sigma_t^2 < 0` (above
    :math:`\sqrt{(1 - \bar\alpha_t)\bar\alpha_{t'} / (\bar\alpha_{t'} - \bar\alpha_t)}`, which is
    :math:`\ge 1`) raises ``ValueError`` instead of clamping, which would break the marginal condition.

    Parameters
    ----------
    schedule : Schedule
        The variance schedule.
    xt : torch.Tensor
        The current samples, shape ``(B, ...)``.
    eps : torch.Tensor
        The model's noise prediction at ``(xt, t)``, of ``xt``'s shape and device.
    t, t_prev : int or torch.Tensor
        The current and the next timestep (ints, or shape ``(B,)``); ``t_prev = -1`` is the last step,
        to :math:`x_0` (:math:`\bar\alpha = 1`).
    eta : float, optional
        :math:`\eta \ge 0` (default 0).
    noise : torch.Tensor, optional
        :math:`z \sim \mathcal N(0, I)` of ``xt``'s shape; required when ``eta > 0``.
    clip_x0 : float, optional
        Clamp :math:`\hat x_0` to ``[-clip_x0, clip_x0]`` (and recompute :math:`\epsilon` from it).

    Returns
    -------
    torch.Tensor
        :math:`x_{t_\text{prev}}`, of ``xt``'s shape.

    Raises
    ------
    TypeError
        If ``model`` is not callable, ``schedule`` is not a :class:`Schedule`, a tensor argument is not a
        floating-point tensor, or ``generator`` is not a ``torch.Generator``.
    ValueError
        If an argument is out of range or of the wrong shape, or a tensor (input or model output) holds
        NaN or inf.
    """
    _check_schedule(schedule)
    check_tensor("xt", xt)
    check_tensor("eps", eps)
    if eps.shape != xt.shape:
        raise ValueError(f"eps must have the shape of xt {tuple(xt.shape)}, got {tuple(eps.shape)}")
    check_same_device(xt=xt, eps=eps)
    eta = check_number("eta", eta, low=0)
    t, t_prev = _check_pair(schedule, t, t_prev)
    if (t.ndim and t.shape[0] != xt.shape[0]) or (t_prev.ndim and t_prev.shape[0] != xt.shape[0]):
        raise ValueError(f"t and t_prev must be ints or have shape ({xt.shape[0]},)")
    if eta > 0:
        check_noise(noise, xt, "noise is required when eta > 0 (pass a standard normal tensor of xt's shape)")
    t, t_prev = torch.broadcast_tensors(t.cpu(), t_prev.cpu())   # float64 work on the CPU, then cast and move
    coef = tuple(_broadcast_to(to_working(c, xt), xt) for c in _ddim_coefficients(schedule, t, t_prev, eta))
    return _ddim_update(coef, xt, eps, noise if eta > 0 else None, clip_x0)[0]


@torch.no_grad()
def ddim_sample(model, schedule: Schedule, shape, steps: int = 50, eta: float = 0.0, cond=None,
                generator: torch.Generator | None = None, callback=None, *, xT: torch.Tensor | None = None,
                device=None, spacing: str = "trailing", clip_x0: float | None = None, progress: bool = False) -> torch.Tensor:
    r"""DDIM sampling over ``steps`` timesteps (Song et al. 2021a, Eq. 12).

    The first step divides by :math:`\sqrt{\bar\alpha_{T-1}}`: about 6e-3 for the linear schedule but 5e-5
    for the cosine one (T = 1000), so a model's :math:`\epsilon` error there is multiplied by about 2e4.
    Without ``clip_x0``, a cosine-schedule model trained on a 2-D toy gave DDIM-50 samples far off the data
    (sliced Wasserstein 9.5, against 0.02 with the linear schedule); pass ``clip_x0`` (e.g. the data range)
    or use the linear schedule.

    Parameters
    ----------
    model : callable
        ``model(x, t, cond) -> eps_hat`` (the model contract).
    schedule : Schedule
        The variance schedule the model was trained with.
    shape : tuple of int
        The output shape ``(B, ...)``.
    steps : int, optional
        Number of model calls (default 50), timesteps from :func:`ddim_timesteps`.
    eta : float, optional
        :math:`\eta \ge 0` (default 0: deterministic); see :func:`ddim_step`.
    cond : torch.Tensor, optional
        Integer labels, shape ``(B,)``.
    generator : torch.Generator, optional
        Source of :math:`x_T` and of the steps' noise.
    callback : callable, optional
        Called after every step with ``{"i", "t", "t_prev", "x", "x0_hat"}``.
    xT : torch.Tensor, optional
        A starting point of shape ``shape`` instead of a fresh draw.
    device : torch.device or str, optional
        Where to sample (default: the model's device, else the CPU).
    spacing : {"trailing", "leading"}, optional
        See :func:`ddim_timesteps`.
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
    eta = check_number("eta", eta, low=0)
    check_callback(callback)
    check_generator(generator)
    if clip_x0 is not None:
        clip_x0 = check_number("clip_x0", clip_x0, low=0, low_open=True)
    ts = ddim_timesteps(schedule.T, steps, spacing)
    device = model_device(model, device)
    x = randn(shape, generator, device=device) if xT is None else check_tensor("xT", xT).to(device)
    if x.shape != shape:
        raise ValueError(f"xT must have shape {shape}, got {tuple(x.shape)}")
    # Once per call: the coefficients of every step (float64 on the CPU, cast once, moved once).
    t_prevs = ts[1:] + [-1]
    coefs = to_working(_ddim_coefficients(schedule, torch.tensor(ts), torch.tensor(t_prevs), eta), x)  # (5, steps)
    coefs = [tuple(c.unbind(0)) for c in coefs.unbind(1)]
    watch = model_watch(device)
    for i, t in enumerate(tqdm(ts, desc="DDIM", disable=not progress)):
        tt = torch.full((shape[0],), t, device=device, dtype=torch.long)
        eps = _call(model, x, tt, cond)
        watch.check(eps, (i, t))
        noise = randn(shape, generator, device=device, dtype=x.dtype) if eta > 0 else None
        x_new, x0_hat = _ddim_update(coefs[i], x, eps, noise, clip_x0)
        if callback is not None:
            callback({"i": i, "t": t, "t_prev": t_prevs[i], "x": x_new, "x0_hat": x0_hat})
        x = x_new
    watch.done()
    return x


@torch.no_grad()
def ddim_invert(model, schedule: Schedule, x0: torch.Tensor, steps: int = 50, cond=None, *,
                spacing: str = "trailing", progress: bool = False) -> torch.Tensor:
    r"""DDIM inversion: the deterministic (:math:`\eta = 0`) update run backwards, from data :math:`x_0` up to :math:`x_T`.

    Each step :math:`x_{t_\text{prev}} \to x_t` reuses :math:`\epsilon` evaluated at :math:`(x_{t_\text{prev}}, t)`,
    the usual approximation; decoding the result with ``ddim_sample(..., xT=...)`` gives :math:`x_0` back
    up to the discretization error.

    Parameters
    ----------
    model : callable
        ``model(x, t, cond) -> eps_hat``.
    schedule : Schedule
        The variance schedule.
    x0 : torch.Tensor
        The data to invert, shape ``(B, ...)``.
    steps : int, optional
        Number of steps (default 50).
    cond : torch.Tensor, optional
        Integer labels, shape ``(B,)``.
    spacing : {"trailing", "leading"}, optional
        See :func:`ddim_timesteps`; use the same as for decoding.
    progress : bool, optional
        Show a progress bar.

    Returns
    -------
    torch.Tensor
        The latent :math:`x_T`, of ``x0``'s shape.

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
    ts = ddim_timesteps(schedule.T, steps, spacing)[::-1]    # increasing
    prevs = [-1] + ts[:-1]
    # once per call, float64 on the CPU: (sqrt(1 - ab_prev), sqrt(ab_prev), sqrt(ab), sqrt(1 - ab)) per step
    ab_prev, ab = _alpha_bar(schedule, torch.tensor(prevs)), _alpha_bar(schedule, torch.tensor(ts))
    coefs = to_working(torch.stack([(1 - ab_prev).sqrt(), ab_prev.sqrt(), ab.sqrt(), (1 - ab).sqrt()]), x0)
    coefs = [tuple(c.unbind(0)) for c in coefs.unbind(1)]
    watch = model_watch(x0.device)
    x = x0
    for i, t in enumerate(tqdm(ts, desc="DDIM inversion", disable=not progress)):
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps = _call(model, x, tt, cond)
        watch.check(eps, (i, t))
        sqrt_1m_ab_prev, sqrt_ab_prev, sqrt_ab, sqrt_1m_ab = coefs[i]
        x0_hat = (x - sqrt_1m_ab_prev * eps) / sqrt_ab_prev
        x = sqrt_ab * x0_hat + sqrt_1m_ab * eps
    watch.done()
    return x
