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
from .ddpm import _ddpm_loss, model_device
from .forward import _q_sample
from .nets import NoisyClassifier, make_denoiser
from .schedules import Schedule, make_schedule
from .score import ScoreMLP, _check_sigmas, _dsm_loss
from .vae import VAE, _vae_loss


class TrainingDivergedError(RuntimeError):
    """Raised when the training loss becomes NaN or infinite; the message names the first bad step."""


@dataclass(frozen=True)
class TrainConfig:
    r"""The training options shared by every trainer: a frozen dataclass, defaults sized for a 2-core CPU.

    Training uses AdamW with a linear warm-up, then cosine decay to ``lr / 10``, gradient clipping and
    an exponential moving average (EMA) of the weights. Fields are checked on construction; trainers
    also take them as keyword overrides (``train_ddpm(data, steps=1500)``).

    Parameters
    ----------
    steps : int
        Optimizer steps (default 4500; ``benchmarks/bench_toys.py`` weighs quality against time on 2-D toys).
    batch_size : int
        Examples per step (default 256).
    lr : float
        Peak learning rate, :math:`> 0` (default 2e-3).
    warmup : int
        Steps of linear warm-up (default 100).
    grad_clip : float or None
        Maximal gradient norm (default 1.0; ``None``: no clipping).
    ema_decay : float or None
        EMA decay in :math:`[0, 1)` (default 0.999; ``None``: off). Warmed up as
        :math:`d = \min(d_\text{ema}, (1 + \text{step})/(10 + \text{step}))` with :math:`d_\text{ema}` = ``ema_decay``, which stays below 0.999 until
        step 8,991: a 4,500-step run averages over its last ~500 steps.
    seed : int
        Seeds the initial weights, the batches and the noise (default 0).
    progress : bool
        Show a tqdm progress bar (default ``True``).
    T : int
        DDPM only: number of timesteps (default 1000).
    schedule : {"linear", "cosine"}
        DDPM only: the schedule's name (default ``"linear"``).
    p_uncond : float
        DDPM and flow matching: probability of replacing a label by the null label, for classifier-free
        guidance, used when labels are given (default 0.1).
    net : dict
        Keyword arguments for the network (e.g. ``{"hidden": 256}``).

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If a field is not of its type or out of its range.
    """
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
    # DDPM and flow matching (train_flow)
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
    """Exponential moving average of a model's parameters (buffers are copied).

    Parameters
    ----------
    model : torch.nn.Module
        The model to average; ``EMA.shadow`` is a frozen copy in eval mode.
    decay : float
        The decay :math:`d`.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)
        self._shadow_params = list(self.shadow.parameters())
        self._shadow_buffers = list(self.shadow.buffers())

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int):
        r"""Move the average towards ``model``: :math:`\bar\theta \leftarrow d'\,\bar\theta + (1 - d')\,\theta`.

        With the warm start :math:`d' = \min(d, (1 + \text{step})/(10 + \text{step}))`, so early steps average
        over few steps.

        Parameters
        ----------
        model : torch.nn.Module
            The model being trained (same architecture).
        step : int
            The step number.
        """
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


SYNC_EVERY = 50   # on an accelerator, losses are read back (one device-to-host sync) every SYNC_EVERY steps


def fit(model: torch.nn.Module, loss_fn, config: TrainConfig, n_data: int, *, desc: str = "training", callback=None):
    """The shared loop: loss_fn(idx, generator) -> scalar loss for the batch of data indices idx.
    Returns (trained model, list of per-step losses); the EMA weights when ema_decay is set.

    On the CPU each loss is read as it comes and a NaN or inf stops training at once. On an accelerator,
    reading a loss would make the host wait for the device every step, so losses stay on the device and
    are read back SYNC_EVERY steps at a time (and at the end): a divergence is then reported up to
    SYNC_EVERY - 1 steps late, still naming the first bad step. A callback gets each step's loss as a
    float, which on an accelerator costs that wait every step (pass none to avoid it)."""
    g = torch.Generator().manual_seed(config.seed)
    p = next(model.parameters(), None)
    on_cpu = p is None or p.device.type == "cpu"
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
    pending = []          # accelerator only: this chunk's losses, still on the device

    def read_back():      # one sync for the whole chunk; check it, then log it
        values = torch.stack(pending).cpu().tolist()
        for i, value in enumerate(values):
            _check_loss(len(losses) + i, value, config)
        losses.extend(values)
        pending.clear()
        _show_loss(bar, losses, config)

    model.train()
    bar = tqdm(range(config.steps), desc=desc, disable=not config.progress)
    for step in bar:
        idx = torch.randint(0, n_data, (min(config.batch_size, n_data),), generator=g)
        loss = loss_fn(idx, g)
        if on_cpu or callback is not None:
            if pending:
                read_back()
            value = float(loss.detach())
            _check_loss(step, value, config)
        else:
            pending.append(loss.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        sched.step()
        if ema is not None:
            ema.update(model, step)
        if pending:
            if len(pending) == SYNC_EVERY:
                read_back()
            continue
        losses.append(value)
        if step % SYNC_EVERY == 0:
            _show_loss(bar, losses, config)
        if callback is not None:
            callback({"step": step, "loss": value, "model": model})
    if pending:
        read_back()
    out = ema.shadow if ema is not None else model
    return out.eval(), losses


def _check_loss(step: int, value: float, config: TrainConfig):
    if not math.isfinite(value):
        raise TrainingDivergedError(f"training diverged at step {step}: loss = {value}; lower the learning rate "
                                    f"(lr = {config.lr}) or enable grad_clip")


def _show_loss(bar, losses, config: TrainConfig):
    """The progress bar's loss: the mean of the last SYNC_EVERY steps (only numbers already read back)."""
    if config.progress:
        bar.set_postfix(loss=f"{sum(losses[-SYNC_EVERY:]) / len(losses[-SYNC_EVERY:]):.4f}")


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


def setup(data, labels, config: TrainConfig, model, factory, device):
    """What the denoiser trainers share: the model (factory(num_classes) with seeded weights, unless one is
    given) on its device, and the data and labels moved there once. Returns (model, device, x, y, num_classes)."""
    num_classes = int(labels.max()) + 1 if labels is not None else None
    if model is None:
        model = _init_model(lambda: factory(num_classes), config.seed)
    device = model_device(model, device)
    model.to(device)
    return model, device, data.to(device), (labels.to(device) if labels is not None else None), num_classes


def dropped_labels(y_all, idx, g, p_uncond: float, num_classes):
    """The batch's labels, each replaced by the null label (num_classes) with probability p_uncond, so that one
    network is also the unconditional model (classifier-free guidance, Ho & Salimans 2021); None without labels."""
    if y_all is None:
        return None
    drop = torch.rand(idx.shape[0], generator=g) < p_uncond
    # torch.where, not a boolean-mask assignment: that would sync on a GPU
    return torch.where(drop.to(idx.device, non_blocking=True), num_classes, y_all[idx])


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
    r"""Train an :math:`\epsilon`-model with the simplified loss (Ho et al. 2020, Algorithm 1; :func:`ddpm_loss`).

    With labels, the model is class-conditional and labels are dropped to the null label with probability
    ``p_uncond``, so the one network also serves as the unconditional model (classifier-free guidance). The
    schedule defaults to ``make_schedule(config.schedule, config.T)``: sample with the same one. The network
    is :func:`make_denoiser` of the data's shape with ``config.net``.

    Parameters
    ----------
    data : torch.Tensor
        Training data, shape ``(N, D)`` or ``(N, C, H, W)``.
    labels : torch.Tensor, optional
        Integer labels, shape ``(N,)``.
    schedule : Schedule or {"linear", "cosine"}, optional
        The schedule, or its name (the same as the config field).

    config : TrainConfig, optional
        The options (default ``TrainConfig()``).
    model : torch.nn.Module, optional
        A model to train further (default: a new one with seeded initial weights).
    device : torch.device or str, optional
        Where to train (default: the model's device, else the CPU).
    callback : callable, optional
        Called after every step with ``{"step", "loss", "model"}`` (the loss as a float; on an accelerator
        that costs a device-to-host wait every step).
    **overrides
        Any :class:`TrainConfig` field, e.g. ``steps=1500``, replacing the config's value.

    Returns
    -------
    model : torch.nn.Module
        The trained model (the EMA weights when ``ema_decay`` is set), in eval mode.
    losses : list of float
        The loss of every step.

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`TrainConfig`, an override is not one of its fields, or ``data`` is not
        a floating-point tensor.
    ValueError
        If an argument is out of range or of the wrong shape.
    TrainingDivergedError
        If the loss becomes NaN or infinite (naming the first bad step).
    """
    config = _config(config, overrides)
    _check_data(data, labels)
    schedule, config = _resolve_schedule(schedule, config)
    model, device, x_all, y_all, num_classes = setup(
        data, labels, config, model, lambda k: make_denoiser(data.shape[1:], num_classes=k, **config.net), device)
    ab = schedule.alpha_bars
    tables = ab.sqrt(), (1 - ab).sqrt()       # float64 on the CPU, once; each batch gathers, casts, moves

    def loss_fn(idx, g):                      # data checked once above: no per-step checks (nor syncs)
        idx = idx.to(device, non_blocking=True)
        cond = dropped_labels(y_all, idx, g, config.p_uncond, num_classes)
        return _ddpm_loss(model, schedule, x_all[idx], cond, g, tables)
    return fit(model, loss_fn, config, data.shape[0], desc="train_ddpm", callback=callback)


def train_score_model(data: torch.Tensor, sigmas, config: TrainConfig | None = None, *, model=None, device=None,
                      callback=None, **overrides):
    r"""Train a noise-conditional score network :math:`s_\theta(x, \sigma)` by denoising score matching (:func:`dsm_loss`).

    The network is a :class:`ScoreMLP` with ``config.net``.

    Parameters
    ----------
    data : torch.Tensor
        Vectors, shape ``(N, D)``.
    sigmas : sequence of float or torch.Tensor
        The noise levels, positive.

    config : TrainConfig, optional
        The options (default ``TrainConfig()``).
    model : torch.nn.Module, optional
        A model to train further (default: a new one with seeded initial weights).
    device : torch.device or str, optional
        Where to train (default: the model's device, else the CPU).
    callback : callable, optional
        Called after every step with ``{"step", "loss", "model"}`` (the loss as a float; on an accelerator
        that costs a device-to-host wait every step).
    **overrides
        Any :class:`TrainConfig` field, e.g. ``steps=1500``, replacing the config's value.

    Returns
    -------
    model : torch.nn.Module
        The trained model (the EMA weights when ``ema_decay`` is set), in eval mode.
    losses : list of float
        The loss of every step.

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`TrainConfig`, an override is not one of its fields, or ``data`` is not
        a floating-point tensor.
    ValueError
        If an argument is out of range or of the wrong shape.
    TrainingDivergedError
        If the loss becomes NaN or infinite (naming the first bad step).
    """
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
    sigmas = sigmas.to(device)
    return fit(model, lambda idx, g: _dsm_loss(model, x_all[idx.to(device, non_blocking=True)], sigmas, g), config,
               data.shape[0], desc="train_score_model", callback=callback)


def train_vae(data: torch.Tensor, config: TrainConfig | None = None, *, latent_dim: int = 2, beta: float = 1.0,
              decoder_std: float = 0.2, model=None, device=None, callback=None, **overrides):
    r"""Train a :class:`VAE` by maximizing the (:math:`\beta`-weighted) ELBO (:func:`vae_loss`).

    Parameters
    ----------
    data : torch.Tensor
        Training data, shape ``(N, ...)``.
    latent_dim : int, optional
        Latent dimension of a new model (default 2).
    beta : float, optional
        Weight of the KL term, :math:`\ge 0` (default 1).
    decoder_std : float, optional
        The decoder's fixed standard deviation, :math:`> 0` (default 0.2).

    config : TrainConfig, optional
        The options (default ``TrainConfig()``).
    model : torch.nn.Module, optional
        A model to train further (default: a new one with seeded initial weights).
    device : torch.device or str, optional
        Where to train (default: the model's device, else the CPU).
    callback : callable, optional
        Called after every step with ``{"step", "loss", "model"}`` (the loss as a float; on an accelerator
        that costs a device-to-host wait every step).
    **overrides
        Any :class:`TrainConfig` field, e.g. ``steps=1500``, replacing the config's value.

    Returns
    -------
    model : torch.nn.Module
        The trained model (the EMA weights when ``ema_decay`` is set), in eval mode.
    losses : list of float
        The loss of every step.

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`TrainConfig`, an override is not one of its fields, or ``data`` is not
        a floating-point tensor.
    ValueError
        If an argument is out of range or of the wrong shape.
    TrainingDivergedError
        If the loss becomes NaN or infinite (naming the first bad step).
    """
    config = _config(config, overrides)
    _check_data(data)
    if model is None:
        model = _init_model(lambda: VAE(data.shape[1:], latent_dim=latent_dim, **config.net), config.seed)
    device = model_device(model, device)
    model.to(device)
    beta = check_number("beta", beta, low=0)
    decoder_std = check_number("decoder_std", decoder_std, low=0, low_open=True)
    x_all = data.to(device)
    return fit(model, lambda idx, g: _vae_loss(model, x_all[idx.to(device, non_blocking=True)], beta, decoder_std,
                                               g)["loss"],
               config, data.shape[0], desc="train_vae", callback=callback)


def train_classifier(data: torch.Tensor, labels: torch.Tensor, config: TrainConfig | None = None, *,
                     schedule: Schedule | str | None = None, model=None, device=None, callback=None, **overrides):
    r"""Train a noise-aware classifier :math:`p_\phi(c \mid x_t, t)` for classifier guidance.

    The data are noised by the forward process at uniform :math:`t` (:func:`q_sample`); the network is a
    :class:`NoisyClassifier`.

    Parameters
    ----------
    data : torch.Tensor
        Clean data, shape ``(N, D)`` or ``(N, C, H, W)``.
    labels : torch.Tensor
        Integer labels, shape ``(N,)`` (required).
    schedule : Schedule or {"linear", "cosine"}, optional
        The forward process's schedule (default from the config).

    config : TrainConfig, optional
        The options (default ``TrainConfig()``).
    model : torch.nn.Module, optional
        A model to train further (default: a new one with seeded initial weights).
    device : torch.device or str, optional
        Where to train (default: the model's device, else the CPU).
    callback : callable, optional
        Called after every step with ``{"step", "loss", "model"}`` (the loss as a float; on an accelerator
        that costs a device-to-host wait every step).
    **overrides
        Any :class:`TrainConfig` field, e.g. ``steps=1500``, replacing the config's value.

    Returns
    -------
    model : torch.nn.Module
        The trained model (the EMA weights when ``ema_decay`` is set), in eval mode.
    losses : list of float
        The loss of every step.

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`TrainConfig`, an override is not one of its fields, or ``data`` is not
        a floating-point tensor.
    ValueError
        If an argument is out of range or of the wrong shape.
    TrainingDivergedError
        If the loss becomes NaN or infinite (naming the first bad step).
    """
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
    ab = schedule.alpha_bars
    tables = ab.sqrt(), (1 - ab).sqrt()       # float64 on the CPU, once

    def loss_fn(idx, g):                      # data checked once above: no per-step checks (nor syncs)
        idx = idx.to(device, non_blocking=True)
        x0, y = x_all[idx], y_all[idx]
        t_cpu = torch.randint(0, schedule.T, (x0.shape[0],), generator=g)
        noise = torch.randn(x0.shape, generator=g).to(device, non_blocking=True)
        xt = _q_sample(schedule, x0, t_cpu, noise, tables)
        return F.cross_entropy(model(xt, t_cpu.to(device, non_blocking=True)), y)
    return fit(model, loss_fn, config, data.shape[0], desc="train_classifier", callback=callback)
