"""Trainers for every model in the package (DDPM, DSM score model, VAE, noise-aware classifier),
sharing one seeded loop with optional EMA, gradient clipping, a tqdm progress bar, and a clear
error when training diverges. Configs are frozen dataclasses sized for a 2-core CPU."""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ._checks import check_int, check_number, check_tensor
from .ddpm import ddpm_loss, model_device
from .forward import q_sample
from .nets import NoisyClassifier, make_denoiser
from .schedules import Schedule, make_schedule
from .score import ScoreMLP, _check_sigmas, dsm_loss
from .vae import VAE, vae_loss


class TrainingDivergedError(RuntimeError):
    """Raised when the loss becomes NaN or infinite."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 4500                # optimizer steps (benchmarks/bench_toys.py: quality vs time on 2-D toys)
    batch_size: int = 256
    lr: float = 2e-3                 # peak learning rate (linear warm-up, then cosine decay to lr / 10)
    warmup: int = 100
    grad_clip: float | None = 1.0    # max gradient norm (None: no clipping)
    ema_decay: float | None = 0.999  # exponential moving average of the weights (None: off); warmed up as
                                     # d = min(ema_decay, (1 + step) / (10 + step)), which stays below 0.999
                                     # until step 8,991: a 4,500-step run averages over its last ~500 steps
    seed: int = 0
    progress: bool = True            # tqdm progress bar
    # DDPM only
    T: int = 1000
    schedule: str = "linear"         # "linear" or "cosine"
    p_uncond: float = 0.1            # label dropout for classifier-free guidance (used when labels are given)
    net: dict = field(default_factory=dict)  # keyword arguments for the network (e.g. hidden=256)

    def __post_init__(self):
        check_int("steps", self.steps, low=1)
        check_int("batch_size", self.batch_size, low=1)
        check_number("lr", self.lr, low=0, low_open=True)
        check_int("warmup", self.warmup, low=0)
        if self.grad_clip is not None:
            check_number("grad_clip", self.grad_clip, low=0, low_open=True)
        if self.ema_decay is not None:
            check_number("ema_decay", self.ema_decay, low=0, high=1, high_open=True)
        check_int("T", self.T, low=1)
        check_number("p_uncond", self.p_uncond, low=0, high=1)
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(f"schedule must be 'linear' or 'cosine', got {self.schedule!r}")


def _config(config, overrides) -> TrainConfig:
    config = config or TrainConfig()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise TypeError(f"unknown training option(s) {sorted(unknown)}; allowed: {[f.name for f in dataclasses.fields(TrainConfig)]}")
    return dataclasses.replace(config, **overrides)


class EMA:
    """Exponential moving average of a model's parameters and buffers."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)
        self._shadow_params = list(self.shadow.parameters())
        self._shadow_buffers = list(self.shadow.buffers())

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int):
        d = min(self.decay, (1 + step) / (10 + step))   # warm start: average over few steps early on
        # One fused call over all tensors (same values as a per-tensor lerp_, several times fewer dispatches).
        torch._foreach_lerp_(self._shadow_params, [p.detach() for p in model.parameters()], 1 - d)
        for s, b in zip(self._shadow_buffers, model.buffers()):
            s.copy_(b)


def _init_model(factory, seed: int):
    """Build a model with seeded initial weights without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def fit(model: torch.nn.Module, loss_fn, config: TrainConfig, n_data: int, *, desc: str = "training", callback=None):
    """The shared loop: loss_fn(idx, generator) -> scalar loss for the batch of data indices idx.
    Returns (trained model, list of per-step losses); the EMA weights when ema_decay is set."""
    g = torch.Generator().manual_seed(config.seed)
    # foreach: the multi-tensor Adam, bitwise the same updates as the default single-tensor loop on the
    # CPU, with far fewer small operations (most of a small model's step time on a CPU is per-op overhead).
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, foreach=True)

    def lr_at(step):
        if step < config.warmup:
            return (step + 1) / config.warmup
        frac = (step - config.warmup) / max(1, config.steps - config.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ema = EMA(model, config.ema_decay) if config.ema_decay is not None else None
    losses = []
    model.train()
    bar = tqdm(range(config.steps), desc=desc, disable=not config.progress)
    for step in bar:
        idx = torch.randint(0, n_data, (min(config.batch_size, n_data),), generator=g)
        loss = loss_fn(idx, g)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingDivergedError(f"training diverged at step {step}: loss = {value}; lower the learning rate "
                                        f"(lr = {config.lr}) or enable grad_clip")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        sched.step()
        if ema is not None:
            ema.update(model, step)
        losses.append(value)
        if config.progress and step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if callback is not None:
            callback({"step": step, "loss": value, "model": model})
    out = ema.shadow if ema is not None else model
    return out.eval(), losses


def _check_data(data, labels=None):
    check_tensor("data", data)
    if data.ndim not in (2, 4):
        raise ValueError(f"data must be (N, D) vectors or (N, C, H, W) images, got shape {tuple(data.shape)}")
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.shape != (data.shape[0],):
            raise ValueError(f"labels must be an integer tensor of shape ({data.shape[0]},), got "
                             f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}")
        if int(labels.min()) < 0:
            raise ValueError(f"labels must be >= 0, got {int(labels.min())}")


def _resolve_schedule(schedule, config: TrainConfig):
    """`schedule` may be a Schedule object or, like TrainConfig.schedule, a name ("linear" or "cosine");
    a name goes into the config so that T and the name travel together."""
    if isinstance(schedule, str):
        config = dataclasses.replace(config, schedule=schedule)
        schedule = None
    elif schedule is not None and not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule, 'linear', 'cosine' or None, got {type(schedule).__name__}")
    return (schedule or make_schedule(config.schedule, config.T)), config


def train_ddpm(data: torch.Tensor, labels: torch.Tensor | None = None, config: TrainConfig | None = None, *,
               model: torch.nn.Module | None = None, schedule: Schedule | str | None = None, device=None, callback=None,
               **overrides):
    """Train an epsilon model on any (N, D) or (N, C, H, W) float tensor with the simplified loss.

    With labels, the model is class-conditional and labels are dropped to the null label with
    probability p_uncond, so the one network also serves as the unconditional model (CFG).
    The schedule defaults to make_schedule(config.schedule, config.T): sample with the same one.
    `schedule` may also be a name, "linear" or "cosine" (the same as the config field).
    Returns (model, losses).
    """
    config = _config(config, overrides)
    _check_data(data, labels)
    schedule, config = _resolve_schedule(schedule, config)
    num_classes = int(labels.max()) + 1 if labels is not None else None
    if model is None:
        model = _init_model(lambda: make_denoiser(data.shape[1:], num_classes=num_classes, **config.net), config.seed)
    device = model_device(model, device)
    model.to(device)
    x_all = data.to(device)
    y_all = labels.to(device) if labels is not None else None

    def loss_fn(idx, g):
        x0 = x_all[idx.to(device)]
        cond = None
        if y_all is not None:
            cond = y_all[idx.to(device)].clone()
            drop = torch.rand(cond.shape[0], generator=g) < config.p_uncond
            cond[drop.to(device)] = num_classes       # the null label
        return ddpm_loss(model, schedule, x0, cond=cond, generator=g)
    return fit(model, loss_fn, config, data.shape[0], desc="train_ddpm", callback=callback)


def train_score_model(data: torch.Tensor, sigmas, config: TrainConfig | None = None, *, model=None, device=None,
                      callback=None, **overrides):
    """Train a noise-conditional score network s(x, sigma) by denoising score matching. Returns (model, losses)."""
    config = _config(config, overrides)
    _check_data(data)
    sigmas = _check_sigmas(sigmas)
    if data.ndim != 2:
        raise ValueError(f"train_score_model handles vectors (N, D), got {tuple(data.shape)}")
    if model is None:
        model = _init_model(lambda: ScoreMLP(dim=data.shape[1], **config.net), config.seed)
    device = model_device(model, device)
    model.to(device)
    x_all = data.to(device)
    return fit(model, lambda idx, g: dsm_loss(model, x_all[idx.to(device)], sigmas, generator=g), config,
               data.shape[0], desc="train_score_model", callback=callback)


def train_vae(data: torch.Tensor, config: TrainConfig | None = None, *, latent_dim: int = 2, beta: float = 1.0,
              decoder_std: float = 0.2, model=None, device=None, callback=None, **overrides):
    """Train a VAE by maximizing the (beta-weighted) ELBO. Returns (model, losses)."""
    config = _config(config, overrides)
    _check_data(data)
    if model is None:
        model = _init_model(lambda: VAE(data.shape[1:], latent_dim=latent_dim, **config.net), config.seed)
    device = model_device(model, device)
    model.to(device)
    x_all = data.to(device)
    return fit(model, lambda idx, g: vae_loss(model, x_all[idx.to(device)], beta=beta, decoder_std=decoder_std,
                                              generator=g)["loss"],
               config, data.shape[0], desc="train_vae", callback=callback)


def train_classifier(data: torch.Tensor, labels: torch.Tensor, config: TrainConfig | None = None, *,
                     schedule: Schedule | str | None = None, model=None, device=None, callback=None, **overrides):
    """Train a noise-aware classifier p(c | x_t, t) on data noised by the forward process at uniform t
    (what classifier guidance needs). Returns (model, losses)."""
    config = _config(config, overrides)
    _check_data(data, labels)
    if labels is None:
        raise ValueError("labels are required to train a classifier")
    schedule, config = _resolve_schedule(schedule, config)
    num_classes = int(labels.max()) + 1
    if model is None:
        model = _init_model(lambda: NoisyClassifier(data.shape[1:], num_classes, **config.net), config.seed)
    device = model_device(model, device)
    model.to(device)
    x_all, y_all = data.to(device), labels.to(device)

    def loss_fn(idx, g):
        x0, y = x_all[idx.to(device)], y_all[idx.to(device)]
        t = torch.randint(0, schedule.T, (x0.shape[0],), generator=g).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        return F.cross_entropy(model(q_sample(schedule, x0, t, noise), t), y)
    return fit(model, loss_fn, config, data.shape[0], desc="train_classifier", callback=callback)
