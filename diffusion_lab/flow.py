r"""Flow matching and rectified flow on the linear path :math:`x_t = (1 - t)\,x_0 + t\,\epsilon` (Lipman et al. 2023,
Eqs. 22-23; Liu et al. 2023, Eq. 1), SD3's logit-normal times (Esser et al. 2024, Eq. 19), the minibatch
optimal-transport coupling (Tong et al. 2023, OT-CFM) and Liu et al.'s straightness. A flow model predicts the
velocity :math:`dx_t/dt = \epsilon - x_0` and samples with
``ode_sample(model, linear_path(), shape, prediction="velocity")``; ``dl.cfg`` wraps it unchanged (a guided
velocity is the same affine combination as a guided :math:`\epsilon` at fixed :math:`x_t` and :math:`t`).
"""
from __future__ import annotations

import torch

from ._checks import check_generator, check_int, check_shape, check_tensor, randn
from .ddpm import _check_cond, _check_model, model_device
from .nets import TimeMLP, UNet, make_denoiser
from .ode import ode_sample, time_grid
from .paths import linear_path
from .train import TrainConfig, _check_data, _config, dropped_labels, fit, setup

T_SAMPLINGS = ("uniform", "logit_normal")
COUPLINGS = ("independent", "ot")
TIME_SCALE = 1000.0


class _UnitTime:
    """The networks embed DDPM's timesteps 0..999; a flow's t in [0, 1] is scaled by 1000 first (diffusers'
    FlowMatchEulerDiscreteScheduler hands SD3 the timestep 1000 t), so the sinusoidal embedding resolves it."""

    def forward(self, x, t, cond=None):
        return super().forward(x, t * TIME_SCALE, cond)


class VelocityMLP(_UnitTime, TimeMLP):
    r"""A :class:`TimeMLP` as a velocity model: ``model(x, t, cond=None)`` :math:`\to dx_t/dt`, float ``t`` in :math:`[0, 1]` of shape ``(B,)``.

    ``t`` is scaled by 1000 before the time embedding. Same constructor arguments as :class:`TimeMLP`.

    Parameters
    ----------
    dim, hidden, depth, emb_dim, num_classes, sample_shape
        As for :class:`TimeMLP`.
    """


class VelocityUNet(_UnitTime, UNet):
    r"""A :class:`UNet` as a velocity model: ``model(x, t, cond=None)`` :math:`\to dx_t/dt`, float ``t`` in :math:`[0, 1]` of shape ``(B,)``.

    ``t`` is scaled by 1000 before the time embedding. Same constructor arguments as :class:`UNet`.

    Parameters
    ----------
    in_channels, base, mults, emb_dim, num_classes
        As for :class:`UNet`.
    """


def make_velocity_net(sample_shape, num_classes: int | None = None, arch: str = "auto", **kwargs) -> torch.nn.Module:
    r""":func:`make_denoiser`'s architecture (same arguments) as a velocity model taking float :math:`t \in [0, 1]`.

    Parameters
    ----------
    sample_shape : tuple of int
        One sample's shape: ``(dim,)`` or ``(C, H, W)``.
    num_classes : int, optional
        Number of classes for conditioning.
    arch : {"auto", "mlp", "unet"}, optional
        As for :func:`make_denoiser`.
    **kwargs
        Passed to the network's constructor.

    Returns
    -------
    torch.nn.Module
        A :class:`VelocityMLP` or :class:`VelocityUNet`.

    Raises
    ------
    ValueError
        If ``arch`` is unknown or ``sample_shape`` is neither ``(dim,)`` nor ``(C, H, W)``.
    """
    net = make_denoiser(sample_shape, num_classes=num_classes, arch=arch, **kwargs)
    return {TimeMLP: VelocityMLP, UNet: VelocityUNet}[type(net)](**net.config)


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def sample_t(n: int, t_sampling: str, generator, device) -> torch.Tensor:
    """n training times in (0, 1): uniform, or logit-normal sigmoid(N(0, 1)) (SD3's default m = 0, s = 1)."""
    gen_device = generator.device if generator is not None else device
    if t_sampling == "uniform":
        t = torch.rand(n, generator=generator, device=gen_device)
    else:
        t = torch.sigmoid(torch.randn(n, generator=generator, device=gen_device))
    return t.to(device, non_blocking=True)


def _flow_loss(model, x0, cond, generator, t_sampling, eps=None):
    """flow_matching_loss without the checks (training loops); eps: the coupled noise, drawn when None."""
    # 1. the other end of the line (independent coupling: fresh noise) and the times
    if eps is None:
        eps = randn(x0.shape, generator, device=x0.device, dtype=x0.dtype)
    t = sample_t(x0.shape[0], t_sampling, generator, x0.device).to(x0.dtype)
    tb = t.reshape(-1, *([1] * (x0.ndim - 1)))                       # (B, 1, ...)
    # 2. the point on the line and its velocity (Lipman et al. 2023, Eqs. 22-23 with sigma_min = 0)
    xt = (1 - tb) * x0 + tb * eps
    target = eps - x0
    # 3. regress the velocity
    return torch.mean((model(xt, t, cond) - target) ** 2)


def flow_matching_loss(model, x0: torch.Tensor, cond=None, generator: torch.Generator | None = None,
                       t_sampling: str = "uniform") -> torch.Tensor:
    r"""The conditional flow matching loss (Lipman et al. 2023, Eqs. 22-23; Liu et al. 2023, Eq. 1).

    .. math::

       L = \mathbb E\,\big\| v_\theta(x_t, t) - (\epsilon - x_0) \big\|^2, \qquad x_t = (1 - t)\,x_0 + t\,\epsilon,
       \quad \epsilon \sim \mathcal N(0, I),

    the mean over the batch and the dimensions, with :math:`t` drawn by ``t_sampling``.

    Parameters
    ----------
    model : callable
        ``model(x, t, cond) -> velocity`` with float ``t`` of shape ``(B,)``.
    x0 : torch.Tensor
        A batch of data, shape ``(B, ...)``.
    cond : torch.Tensor, optional
        Integer labels, shape ``(B,)``.
    generator : torch.Generator, optional
        Source of :math:`t` and :math:`\epsilon`.
    t_sampling : {"uniform", "logit_normal"}, optional
        Uniform on :math:`(0, 1)` (default), or SD3's logit-normal :math:`\mathrm{sigmoid}(\mathcal N(0, 1))`
        (Esser et al. 2024, Eq. 19).

    Returns
    -------
    torch.Tensor
        The scalar loss.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If ``x0`` is not a finite floating-point batch, or ``t_sampling`` is unknown.
    """
    _check_model(model)
    check_tensor("x0", x0)
    if x0.ndim < 2:
        raise ValueError(f"x0 must be a batch (B, ...), got shape {tuple(x0.shape)}")
    _check_cond(cond, x0.shape[0])
    check_generator(generator)
    _check_choice("t_sampling", t_sampling, T_SAMPLINGS)
    return _flow_loss(model, x0, cond, generator, t_sampling)


def ot_coupling(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    r"""The exact minibatch optimal-transport plan (Tong et al. 2023, Sec. 3.2): ``eps`` reordered.

    The pairs :math:`(x_{0,i}, \epsilon_i)` minimise :math:`\sum_i \|x_{0,i} - \epsilon_i\|^2` over all
    permutations, found by the Hungarian method (scipy's ``linear_sum_assignment``). Given tensors on an
    accelerator, the cost matrix comes to the host (a sync); :func:`train_flow` avoids that by coupling on the host.

    Parameters
    ----------
    x0, eps : torch.Tensor
        Data and noise, of one shape ``(B, ...)``.

    Returns
    -------
    torch.Tensor
        ``eps`` permuted along the batch.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If the inputs are not finite floating-point tensors of one shape.
    """
    from scipy.optimize import linear_sum_assignment
    cost = torch.cdist(x0.detach().flatten(1).double().cpu(), eps.detach().flatten(1).double().cpu()) ** 2  # (B, B)
    rows, cols = linear_sum_assignment(cost.numpy())             # rows = 0..B-1 for a square matrix
    return eps[torch.as_tensor(cols, device=eps.device)]


def train_flow(data: torch.Tensor, labels: torch.Tensor | None = None, config: TrainConfig | None = None, *,
               pairs: torch.Tensor | None = None, t_sampling: str = "uniform", coupling: str = "independent",
               model: torch.nn.Module | None = None, device=None, callback=None, **overrides):
    """Train a velocity model by flow matching (:func:`flow_matching_loss`), with :func:`train_ddpm`'s loop and options.

    The loop is seeded, with EMA, clipping, a progress bar and :class:`TrainingDivergedError`. Sample the
    result with ``ode_sample(model, linear_path(), shape, prediction="velocity")``.

    Parameters
    ----------
    data : torch.Tensor
        Training data, shape ``(N, D)`` or ``(N, C, H, W)``.
    labels : torch.Tensor, optional
        Integer labels ``(N,)``: class-conditional, each label dropped to the null label with probability
        ``p_uncond`` (for :func:`cfg`).
    pairs : torch.Tensor, optional
        The noise coupled to each data point, of ``data``'s shape (rectified flow: :math:`x_T` from
        :func:`reflow_pairs`, ``data`` its :math:`x_0`). Without pairs each batch draws fresh noise.
    t_sampling : {"uniform", "logit_normal"}, optional
        How training times are drawn.
    coupling : {"independent", "ot"}, optional
        Couple fresh noise independently (default) or by minibatch OT (:func:`ot_coupling`); must be
        ``"independent"`` when ``pairs`` are given.

    config : TrainConfig, optional
        The options (default ``TrainConfig()``).
    model : torch.nn.Module, optional
        Train this module (in place, as :func:`train_ddpm` does) instead of a new one; pass a copy to keep the original.
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
    _check_choice("t_sampling", t_sampling, T_SAMPLINGS)
    _check_choice("coupling", coupling, COUPLINGS)
    if pairs is not None:
        check_tensor("pairs", pairs)
        if pairs.shape != data.shape:
            raise ValueError(f"pairs must have data's shape {tuple(data.shape)} (one noise per data point), "
                             f"got {tuple(pairs.shape)}")
        if coupling != "independent":
            raise ValueError(f"coupling must be 'independent' when pairs are given (the pairs are the coupling), "
                             f"got {coupling!r}")
    if model is not None:      # e.g. the flow being rectified; EMA weights come back frozen, so unfreeze them
        model.requires_grad_(True)
    model, device, x_all, y_all, num_classes = setup(
        data, labels, config, model, lambda k: make_velocity_net(data.shape[1:], num_classes=k, **config.net), device)
    e_all = pairs.to(device) if pairs is not None else None
    # Minibatch OT is solved on the host (scipy): keep a host copy of the data, draw the noise there (as randn
    # does anyway with the CPU generator) and move the coupled noise, so an accelerator never waits for a read-back.
    x_host = x_all.cpu() if coupling == "ot" else None

    def loss_fn(idx, g):                      # data checked once above: no per-step checks
        cond = dropped_labels(y_all, idx.to(device, non_blocking=True), g, config.p_uncond, num_classes)
        if coupling == "ot":
            x0_host = x_host[idx]
            eps = ot_coupling(x0_host, randn(x0_host.shape, g, device="cpu", dtype=x0_host.dtype))
            x0, eps = x0_host.to(device, non_blocking=True), eps.to(device, non_blocking=True)
        else:
            idx = idx.to(device, non_blocking=True)
            x0 = x_all[idx]
            eps = e_all[idx] if e_all is not None else randn(x0.shape, g, device=device, dtype=x0.dtype)
        return _flow_loss(model, x0, cond, g, t_sampling, eps)
    return fit(model, loss_fn, config, data.shape[0], desc="train_flow", callback=callback)


def _start(model, n, steps, generator, shape, cond):
    """Checks shared by reflow_pairs and straightness; returns (steps, full shape, x_T ~ N(0, I))."""
    _check_model(model)
    n = check_int("n", n, low=1)
    steps = check_int("steps", steps, low=1)
    check_generator(generator)
    if shape is None:
        shape = getattr(model, "config", {}).get("sample_shape")
        if shape is None:
            raise ValueError(f"shape is required for a model without config['sample_shape'] "
                             f"({type(model).__name__}): pass the shape of one sample, e.g. shape=(2,)")
    shape = (n,) + check_shape("shape", shape)
    _check_cond(cond, n)
    return steps, shape, randn(shape, generator, device=model_device(model))


@torch.no_grad()
def reflow_pairs(model, n: int, steps: int = 50, generator: torch.Generator | None = None, *, method: str = "heun",
                 cond=None, shape=None):
    """:math:`(x_T, x_0)`: ``n`` noise draws and where the flow's ODE takes them.

    The coupling that one round of rectification trains on (Liu et al. 2023, Algorithm 1), computed with
    :func:`ode_sample`.

    Parameters
    ----------
    model : callable
        A velocity model.
    n : int
        Number of pairs.
    steps : int, optional
        ODE steps (default 50).
    generator : torch.Generator, optional
        Source of the noise.
    method : str, optional
        The ODE solver (default ``"heun"``).
    cond : torch.Tensor, optional
        Labels ``(n,)`` for a conditional flow.
    shape : tuple of int, optional
        One sample's shape, read from ``model.config["sample_shape"]`` when not given.

    Returns
    -------
    x_T : torch.Tensor
        The noise, shape ``(n, *shape)``.
    x_0 : torch.Tensor
        Where the flow takes it.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If an argument is invalid or the shape cannot be found.
    """
    steps, shape, x_T = _start(model, n, steps, generator, shape, cond)
    x_0 = ode_sample(model, linear_path(), shape, steps=steps, method=method, prediction="velocity", cond=cond,
                     x_T=x_T)
    return x_T, x_0


@torch.no_grad()
def straightness(model, n: int, steps: int = 100, generator: torch.Generator | None = None, *, cond=None,
                 shape=None) -> float:
    r"""Liu et al. (2023)'s straightness of a flow, 0 exactly when every path is a straight line.

    .. math:: S = \int_0^1 \mathbb E\,\big\|(x_1 - x_0) - v(x_t, t)\big\|^2\,dt

    along the flow's own paths (:math:`x_1` noise, :math:`x_0` where the ODE takes it; the squared norm summed
    over dimensions, the expectation over ``n`` draws), by Euler with ``steps`` uniform steps and the
    left-point rule.

    Parameters
    ----------
    model : callable
        A velocity model.
    n : int
        Number of paths.
    steps : int, optional
        Euler steps (default 100).
    generator : torch.Generator, optional
        Source of the noise.
    cond : torch.Tensor, optional
        Labels ``(n,)`` for a conditional flow.
    shape : tuple of int, optional
        One sample's shape (default from ``model.config``).

    Returns
    -------
    float

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If an argument is invalid or the shape cannot be found.
    """
    steps, shape, x_T = _start(model, n, steps, generator, shape, cond)
    xs = []
    x_0 = ode_sample(model, linear_path(), shape, steps=steps, method="euler", prediction="velocity", cond=cond,
                     x_T=x_T, callback=lambda d: xs.append(d["x"]))
    ts = time_grid(linear_path(), steps)                          # 1 = t_0 > t_1 > ... > t_steps = 0
    direction = (x_T - x_0).flatten(1)                             # (n, D)
    total, x = 0.0, x_T
    for i, x_next in enumerate(xs):
        h = ts[i] - ts[i + 1]
        v = (x - x_next).flatten(1) / h                            # Euler: x_next = x - h v(x, t_i)
        total = total + h * ((direction - v) ** 2).sum(1).mean()
        x = x_next
    return float(total)
