"""Discrete-time eps-models (integer t, chapters 7-10) as continuous-time models (k-diffusion's
DiscreteEpsDDPMDenoiser is the idea): map t to the timestep n with the nearest log-SNR, rescale x by
sqrt(alpha_bar_n) / alpha(t) so that it carries the noise level the network was trained on, and call it."""
from __future__ import annotations

import torch

from .ddpm import _check_model
from .paths import GaussianPath, check_time, schedule_path
from .schedules import Schedule


def discrete_model(model, schedule: Schedule, path: GaussianPath | None = None):
    """Wrap model(x, n, cond) -> eps (integer n in [0, T-1]) into ct_model(x, t, cond) -> eps with float t
    on `path` (default: the schedule's own path, on which timestep n sits exactly at t = (n + 1) / T).
    eps is unchanged by the rescaling (x / alpha and x_n / sqrt(alpha_bar_n) agree when the SNRs do).
    Costs one host copy of t per call on an accelerator."""
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
