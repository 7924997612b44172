r"""Training objectives as choices of prediction target on a Gaussian path.

Each target is a weighting of the :math:`\epsilon`-loss over log-SNR (Kingma & Gao 2023, Sec. 2-3); EDM's
preconditioning follows from unit-variance targets (Karras et al. 2022, Appendix B.6); and one trainer serves any
path and target.
"""
from __future__ import annotations

import torch

from ._checks import check_number, check_tensor, randn
from ._sampling import check_path
from .flow import make_velocity_net
from .predictions import check_prediction, from_pair, path_coefficients
from .train import TrainConfig, _check_data, _config, fit, setup


def eps_loss_weight(path, prediction: str, t) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The weight density :math:`w(\lambda)` that a ``prediction`` target puts on the :math:`\epsilon`-loss.

    Training ``prediction`` (called :math:`p`) with :math:`t \sim U(t_\min, t_\max)` gives
    :math:`\mathbb E_t \|\hat p - p\|^2 = \int w(\lambda)\, \|\hat\epsilon - \epsilon\|^2 \, d\lambda`,
    with :math:`\lambda = \log(\alpha^2 / \sigma^2)`.

    Parameters
    ----------
    path : GaussianPath
        The path (:func:`vp_path`, :func:`ve_path`, :func:`linear_path`, :func:`schedule_path`).
    prediction : {"eps", "x0", "v", "score", "velocity"}
        The training target.
    t : float or torch.Tensor
        Times in :math:`(t_\min, t_\max)` where :math:`\sigma > 0` and :math:`\alpha > 0`, any shape (flattened
        to ``(T,)``).

    Returns
    -------
    lam : torch.Tensor
        The log-SNR :math:`\lambda(t)`, float64, shape ``(T,)``.
    w : torch.Tensor
        The weight :math:`w = k(t)^2 / (|d\lambda / dt|\, (t_\max - t_\min))`, float64, shape ``(T,)``, where
        :math:`k = \partial p / \partial \epsilon` at fixed :math:`x_t` is 1 (eps), :math:`\sigma/\alpha` (x0),
        :math:`(\alpha^2 + \sigma^2)/\alpha` (v), :math:`1/\sigma` (score),
        :math:`\sigma' - \alpha' \sigma/\alpha` (velocity).

    Raises
    ------
    TypeError
        If ``path`` is not a path.
    ValueError
        If ``prediction`` is unknown, or a time lies where :math:`\alpha(t) = 0` or :math:`\sigma(t) = 0`
        (the log-SNR is infinite).
    """
    check_path(path)
    check_prediction(prediction)
    t64 = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
    a, s, da, ds = (path_coefficients(path, t64, t64.reshape(-1, 1))[i].reshape(-1) for i in range(4))
    if bool((a <= 0).any()) or bool((s <= 0).any()):
        raise ValueError("t must lie where alpha(t) > 0 and sigma(t) > 0 (the log-SNR is finite)")
    k = {"eps": torch.ones_like(a), "x0": s / a, "v": (a * a + s * s) / a, "score": 1 / s,
         "velocity": ds - da * s / a}[prediction]
    dlam_dt = 2 * (da / a - ds / s)
    return 2 * (torch.log(a) - torch.log(s)), k ** 2 / (dlam_dt.abs() * (path.t_max - path.t_min))


def edm_preconditioning(sigma, sigma_data: float = 0.5):
    r"""EDM's :math:`(c_\text{skip}, c_\text{out}, c_\text{in}, c_\text{noise})` at noise level :math:`\sigma`.

    The preconditioning of Karras et al. 2022 (Table 1 and Eq. 7). Its coefficients define
    :math:`D(x; \sigma) = c_\text{skip}\, x + c_\text{out}\, F(c_\text{in}\, x, c_\text{noise})` with
    :math:`x = x_0 + \sigma n` and :math:`\mathrm{Var}[x_0] = \sigma_\text{data}^2`: :math:`c_\text{in}` makes the
    network's input unit-variance, :math:`c_\text{skip}` minimises :math:`c_\text{out}`, and :math:`c_\text{out}`
    makes :math:`F`'s target unit-variance. All four come back as float64 tensors shaped like ``sigma``.

    Parameters
    ----------
    sigma : float or torch.Tensor
        Noise levels :math:`\sigma > 0`, any shape.
    sigma_data : float, optional
        The data's standard deviation :math:`\sigma_\text{data} > 0` (default 0.5, as in EDM).

    Returns
    -------
    c_skip : torch.Tensor
        :math:`\sigma_\text{data}^2 / (\sigma^2 + \sigma_\text{data}^2)`.
    c_out : torch.Tensor
        :math:`\sigma \sigma_\text{data} / \sqrt{\sigma^2 + \sigma_\text{data}^2}`.
    c_in : torch.Tensor
        :math:`1 / \sqrt{\sigma^2 + \sigma_\text{data}^2}`.
    c_noise : torch.Tensor
        :math:`\log(\sigma) / 4`.

    Raises
    ------
    TypeError
        If ``sigma_data`` is not a real number.
    ValueError
        If ``sigma`` holds NaN or inf or a value :math:`\leq 0`, or ``sigma_data <= 0``.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    check_tensor("sigma", sigma)
    if bool((sigma <= 0).any()):
        raise ValueError(f"sigma must be positive, got a minimum of {float(sigma.min()):.4g}")
    sd = check_number("sigma_data", sigma_data, low=0, low_open=True)
    n2 = sigma ** 2 + sd ** 2
    return sd ** 2 / n2, sigma * sd / n2.sqrt(), 1 / n2.sqrt(), sigma.log() / 4


def path_loss(model, path, prediction: str, x0: torch.Tensor, generator: torch.Generator | None = None,
              cond=None) -> torch.Tensor:
    r"""Mean squared error of ``model(x_t, t, cond)`` against the ``prediction`` target of :math:`(x_0, \epsilon)`.

    Here :math:`x_t = \alpha(t)\, x_0 + \sigma(t)\, \epsilon` with :math:`\epsilon \sim \mathcal N(0, I)` and
    :math:`t \sim U(t_\min, t_\max)` (float ``t``, shape ``(B,)``).

    Parameters
    ----------
    model : callable
        ``model(x, t, cond) -> prediction`` with float ``t`` of shape ``(B,)``.
    path : GaussianPath
        The path that makes :math:`x_t`.
    prediction : {"eps", "x0", "v", "score", "velocity"}
        The target ``model`` is trained to return.
    x0 : torch.Tensor
        A batch of data, shape ``(B, ...)``.
    generator : torch.Generator, optional
        Source of :math:`\epsilon` and :math:`t`.
    cond : torch.Tensor, optional
        Labels passed to ``model``.

    Returns
    -------
    torch.Tensor
        The loss, a scalar.

    Raises
    ------
    TypeError
        If ``path`` is not a path or ``x0`` is not a floating-point tensor.
    ValueError
        If ``prediction`` is unknown or ``x0`` holds NaN or inf.
    """
    check_path(path)
    check_prediction(prediction)
    check_tensor("x0", x0)
    return _path_loss(model, path, prediction, x0, generator, cond)


def _path_loss(model, path, prediction, x0, generator, cond):
    eps = randn(x0.shape, generator, device=x0.device, dtype=x0.dtype)
    u = torch.rand(x0.shape[0], generator=generator, dtype=torch.float64)
    t64 = path.t_min + (path.t_max - path.t_min) * u                          # float64 on the CPU
    c = path_coefficients(path, t64, x0)                                       # cast, moved, (B, 1, ...)
    xt = c[0] * x0 + c[1] * eps
    target = from_pair(x0, eps, prediction, *c)
    return torch.mean((model(xt, t64.to(x0.dtype).to(x0.device), cond) - target) ** 2)


def train_path_model(data: torch.Tensor, path, prediction: str, config: TrainConfig | None = None, *,
                     model: torch.nn.Module | None = None, device=None, callback=None, **overrides):
    """Train a network to predict ``prediction`` on ``path`` with :func:`path_loss`, in :func:`train_ddpm`'s loop.

    The network is :func:`make_velocity_net`'s (float :math:`t \\in [0, 1]`); the loop takes
    :class:`TrainConfig`'s steps, batch size, learning rate, EMA and seed. Unconditional. Sample the result with
    ``ode_sample(model, path, shape, prediction=prediction)``.

    Parameters
    ----------
    data : torch.Tensor
        Training data, shape ``(N, D)`` or ``(N, C, H, W)``.
    path : GaussianPath
        The path that makes :math:`x_t` (:func:`vp_path`, :func:`linear_path`, ...).
    prediction : {"eps", "x0", "v", "score", "velocity"}
        The target the network learns.
    config : TrainConfig, optional
        The options (default ``TrainConfig()``).
    model : torch.nn.Module, optional
        Train this module (in place) instead of a new one.
    device : torch.device or str, optional
        Where to train (default: the model's device, else the CPU).
    callback : callable, optional
        Called after every step with ``{"step", "loss", "model"}``.
    **overrides
        Any :class:`TrainConfig` field, e.g. ``steps=1500``, replacing the config's value.

    Returns
    -------
    model : torch.nn.Module
        The trained model (the EMA weights when ``ema_decay`` is set).
    losses : list of float
        The loss of every step.

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`TrainConfig`, an override is not one of its fields, ``path`` is not a
        path, or ``data`` is not a floating-point tensor.
    ValueError
        If ``prediction`` is unknown, or ``data`` holds NaN or inf or has the wrong shape.
    TrainingDivergedError
        If the loss becomes NaN or infinite (naming the first bad step).
    """
    config = _config(config, overrides)
    _check_data(data)
    check_path(path)
    check_prediction(prediction)
    model, device, x_all, _, _ = setup(data, None, config, model,
                                       lambda k: make_velocity_net(data.shape[1:], **config.net), device)

    def loss_fn(idx, g):
        return _path_loss(model, path, prediction, x_all[idx.to(device)], g, None)
    return fit(model, loss_fn, config, data.shape[0], desc=f"train {prediction}", callback=callback)
