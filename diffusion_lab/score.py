"""Langevin dynamics and score matching: the unadjusted Langevin sampler, annealed Langevin
dynamics (Song & Ermon 2019, Algorithm 1), denoising score matching (Vincent 2011) with
lambda(sigma) = sigma^2, and the bridge eps = -sqrt(1 - alpha_bar) * score to DDPM."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ._checks import FiniteWatch, check_callback, check_generator, check_int, check_number, check_tensor, randn
from .nets import ResMLPBlock, timestep_embedding
from .forward import _check_schedule
from .schedules import Schedule


def _check_score_output(s, x, where, watch):
    """The shape now (metadata, free); finiteness through `watch` (no per-step sync on a device)."""
    if not isinstance(s, torch.Tensor) or s.shape != x.shape:
        got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise ValueError(f"score must return the input's shape {tuple(x.shape)}, got {got} ({where})")
    watch.check(s, where)


def _score_watch(x):
    return FiniteWatch(x.device, lambda where: f"score returned non-finite values ({where})")


@torch.no_grad()
def langevin_sample(score_fn, x: torch.Tensor, step_size: float, n_steps: int, generator: torch.Generator | None = None,
                    callback=None) -> torch.Tensor:
    """Unadjusted Langevin: x <- x + step_size * score(x) + sqrt(2 step_size) z, z ~ N(0, I).

    It samples p exactly only as step_size -> 0 (the bias grows with the step size).
    callback, if given, gets {"i": step, "x": x} after every step.
    """
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable, got {type(score_fn).__name__}")
    check_tensor("x", x)
    step_size = check_number("step_size", step_size, low=0, low_open=True)
    n_steps = check_int("n_steps", n_steps, low=0)
    check_callback(callback)
    check_generator(generator)
    watch = _score_watch(x)
    for i in range(n_steps):
        s = score_fn(x)
        _check_score_output(s, x, f"step {i}", watch)
        x = x + step_size * s + math.sqrt(2 * step_size) * randn(x.shape, generator, device=x.device, dtype=x.dtype)
        if callback is not None:
            callback({"i": i, "x": x})
    watch.done()
    return x


def geometric_sigmas(sigma_max: float = 5.0, sigma_min: float = 0.01, n: int = 10) -> torch.Tensor:
    """A decreasing geometric ladder sigma_max = sigma_1 > ... > sigma_n = sigma_min (Song & Ermon 2019)."""
    sigma_max = check_number("sigma_max", sigma_max, low=0, low_open=True)
    sigma_min = check_number("sigma_min", sigma_min, low=0, low_open=True)
    n = check_int("n", n, low=1)
    if sigma_min > sigma_max:
        raise ValueError(f"sigma_min must be <= sigma_max, got sigma_min = {sigma_min}, sigma_max = {sigma_max}")
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n))


def _check_sigmas(sigmas) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).reshape(-1)
    if sigmas.numel() == 0 or not bool(torch.isfinite(sigmas).all()) or bool((sigmas <= 0).any()):
        raise ValueError(f"sigmas must be a non-empty sequence of positive finite numbers, got {sigmas.tolist()}")
    return sigmas


@torch.no_grad()
def annealed_langevin_sample(score_model, sigmas, x: torch.Tensor, step_size: float, n_steps_each: int,
                             generator: torch.Generator | None = None, callback=None, *, progress: bool = False) -> torch.Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

    For each sigma_i (decreasing), run n_steps_each Langevin steps on score_model(x, sigma_i)
    with step alpha_i = step_size * sigma_i^2 / sigma_L^2. score_model(x, sigma) gets sigma
    as a (B,) tensor. callback gets {"level": i, "sigma": sigma_i, "i": step, "x": x}.
    """
    if not callable(score_model):
        raise TypeError(f"score_model must be callable as score_model(x, sigma), got {type(score_model).__name__}")
    sigmas = _check_sigmas(sigmas)
    check_tensor("x", x)
    step_size = check_number("step_size", step_size, low=0, low_open=True)
    n_steps_each = check_int("n_steps_each", n_steps_each, low=1)
    check_callback(callback)
    check_generator(generator)
    sigma_last = float(sigmas[-1])
    watch = _score_watch(x)
    for level, sigma in enumerate(tqdm(sigmas.tolist(), desc="annealed Langevin", disable=not progress)):
        alpha = step_size * sigma ** 2 / sigma_last ** 2
        sig = torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype)
        for i in range(n_steps_each):
            s = score_model(x, sig)
            _check_score_output(s, x, f"sigma = {sigma:.4g}", watch)
            x = x + alpha * s + math.sqrt(2 * alpha) * randn(x.shape, generator, device=x.device, dtype=x.dtype)
            if callback is not None:
                callback({"level": level, "sigma": sigma, "i": i, "x": x})
    watch.done()
    return x


def dsm_loss(score_model, x: torch.Tensor, sigmas, generator: torch.Generator | None = None) -> torch.Tensor:
    """Denoising score matching over a set of noise levels (Song & Ermon 2019, Eqs. 5-6).

    For x_tilde = x + sigma z the target score is -z / sigma; with lambda(sigma) = sigma^2,
    loss = mean_batch 1/2 * sigma^2 * || s(x_tilde, sigma) + z / sigma ||^2 (summed over dimensions),
    with sigma drawn uniformly from `sigmas` per sample.
    """
    if not callable(score_model):
        raise TypeError(f"score_model must be callable as score_model(x, sigma), got {type(score_model).__name__}")
    check_tensor("x", x)
    check_generator(generator)
    return _dsm_loss(score_model, x, _check_sigmas(sigmas).to(x.device), generator)


def _dsm_loss(score_model, x, sigmas, generator) -> torch.Tensor:
    """dsm_loss without the checks (sigmas already checked and on x's device): no device-to-host sync."""
    gen_device = generator.device if generator is not None else x.device
    idx = torch.randint(0, sigmas.numel(), (x.shape[0],), generator=generator, device=gen_device).to(x.device)
    sigma = sigmas[idx].to(x.dtype)
    shape = (-1,) + (1,) * (x.ndim - 1)
    z = randn(x.shape, generator, device=x.device, dtype=x.dtype)
    s = score_model(x + sigma.reshape(shape) * z, sigma)
    if s.shape != x.shape:
        raise ValueError(f"score_model must return the input's shape {tuple(x.shape)}, got {tuple(s.shape)}")
    per_sample = ((sigma.reshape(shape) * s + z) ** 2).flatten(1).sum(1)
    return 0.5 * per_sample.mean()


class ScoreMLP(nn.Module):
    """A noise-conditional score network for vectors: s(x, sigma) = f(x, log sigma) / sigma
    (the 1/sigma output scaling of Song & Ermon 2020, Sec. 3.3)."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, emb_dim: int = 64):
        super().__init__()
        self.config = dict(dim=check_int("dim", dim, low=1), hidden=hidden, depth=depth, emb_dim=emb_dim)
        self.emb_dim = emb_dim
        self.emb = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList([ResMLPBlock(hidden, emb_dim) for _ in range(depth)])
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x, sigma):
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.emb(timestep_embedding(torch.log(sigma) * 100.0, self.emb_dim))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h) / sigma[:, None]


def eps_to_score(eps: torch.Tensor, schedule: Schedule, t) -> torch.Tensor:
    """score(x_t) = -eps / sqrt(1 - alpha_bar_t) (the noise predictor is a scaled score)."""
    _check_schedule(schedule)
    check_tensor("eps", eps)
    t = schedule.check_t(t)
    return -eps / (1 - schedule.at(schedule.alpha_bars, t, eps)).sqrt()


def ddpm_score_model(model, schedule: Schedule, cond=None):
    """View a DDPM epsilon model as a noise-conditional score s(x, sigma) on the forward marginals,
    with sigma = sqrt(1 - alpha_bar_t); each sigma is mapped to the timestep whose sqrt(1 - alpha_bar_t)
    is closest. Use it with annealed Langevin on sigmas taken from the schedule (ddpm_sigmas)."""
    _check_schedule(schedule)
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, t, cond=None), got {type(model).__name__}")
    table = (1 - schedule.alpha_bars).sqrt().float()

    def score_model(x, sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1).cpu()
        t = torch.argmin((table[None, :] - sigma[:, None]).abs(), dim=1).to(x.device)
        eps = model(x, t, cond)
        return -eps / sigma.to(x)[:, None].reshape((-1,) + (1,) * (x.ndim - 1))
    return score_model


def ddpm_sigmas(schedule: Schedule, n: int = 10) -> torch.Tensor:
    """n decreasing noise levels sqrt(1 - alpha_bar_t) at evenly spaced timesteps from T-1 to 0."""
    _check_schedule(schedule)
    n = check_int("n", n, low=1, high=schedule.T)
    ts = torch.linspace(schedule.T - 1, 0, n).round().long()
    return (1 - schedule.alpha_bars[ts]).sqrt().float()
