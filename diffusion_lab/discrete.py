r"""Discrete-time :math:`\epsilon`-models (integer ``t``, chapters 7-10) as continuous-time models (k-diffusion's
``DiscreteEpsDDPMDenoiser`` is the idea): map :math:`t` to the timestep :math:`n` with the nearest log-SNR, rescale
:math:`x` by :math:`\sqrt{\bar\alpha_n}/\alpha(t)` so that it carries the noise level the network was trained on,
and call it.
"""
from __future__ import annotations

import torch

from .ddpm import _check_model
from .paths import GaussianPath, check_time, schedule_path
from .schedules import Schedule


def discrete_model(model, schedule: Schedule, path: GaussianPath | None = None):
    r"""Wrap a discrete-time :math:`\epsilon`-model into a continuous-time one on ``path``.

    ``model(x, n, cond) -> eps`` (integer :math:`n \in [0, T-1]`, chapters 7-10) becomes
    ``ct_model(x, t, cond) -> eps`` with float :math:`t`: :math:`t` is mapped to the timestep :math:`n` with the
    nearest log-SNR and :math:`x` rescaled by :math:`\sqrt{\bar\alpha_n}/\alpha(t)`, so that it carries the noise
    level the network was trained on (k-diffusion's ``DiscreteEpsDDPMDenoiser`` is the idea).
    :math:`\epsilon` is unchanged by the rescaling (:math:`x/\alpha` and :math:`x_n/\sqrt{\bar\alpha_n}` agree
    when the SNRs do). Costs one host copy of ``t`` per call on an accelerator.

    Parameters
    ----------
    model : callable
        ``model(x, n, cond) -> eps_hat``, the model contract.
    schedule : Schedule
        The schedule it was trained with.
    path : GaussianPath, optional
        The path to sample on (default: :func:`schedule_path` of ``schedule``, on which timestep :math:`n`
        sits exactly at :math:`t = (n + 1)/T`).

    Returns
    -------
    callable
        ``ct_model(x, t, cond=None) -> eps`` with float ``t`` of shape ``(B,)``.

    Raises
    ------
    TypeError
        If ``model`` is not callable, ``schedule`` is not a :class:`Schedule` or ``path`` not a path.
    """
    _check_model(model)
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a diffusion_lab Schedule, got {type(schedule).__name__}")
    path = schedule_path(schedule) if path is None else path
    if not isinstance(path, GaussianPath):
        raise TypeError(f"path must be a diffusion_lab path or None, got {type(path).__name__}")
    ab = schedule.alpha_bars
    log_snr_up = (torch.log(ab) - torch.log1p(-ab)).flip(0)       # increasing: n = T-1, ..., 0
    T = schedule.T

    def ct_model(x, t, cond=None):
        t64 = check_time(t).reshape(-1).expand(x.shape[0])
        lam = path.log_snr(t64)
        k = torch.searchsorted(log_snr_up, lam).clamp(1, T - 1)
        k = torch.where(lam - log_snr_up[k - 1] < log_snr_up[k] - lam, k - 1, k)   # the nearer neighbour
        n = T - 1 - k
        scale = (ab[n].sqrt() / path.alpha(t64)).to(x.dtype).to(x.device)
        return model(x * scale.reshape(-1, *([1] * (x.ndim - 1))), n.to(x.device), cond)

    ct_model.schedule, ct_model.path = schedule, path
    return ct_model
