"""Predictor-corrector sampling (Song et al. 2021b, Algorithms 1, 4 and 5): a reverse-SDE or probability-flow
step (the predictor) followed by Langevin steps at the new time (the corrector, chapter 9's sampler with the
score of p_t), the step size set by a signal-to-noise ratio."""
from __future__ import annotations

import math

import torch

from ._checks import check_generator, check_int, check_number, check_tensor, randn
from ._sampling import check_path, start
from .ode import check_start, coefficients, time_grid
from .predictions import check_prediction, to_pair

PREDICTORS = ("sde", "ode")


def langevin_step_size(score: torch.Tensor, noise: torch.Tensor, snr: float) -> float:
    """The corrector's step size :math:`\\epsilon = 2 (r \\, \\overline{\\|z\\|} / \\overline{\\|s\\|})^2`.

    Song et al. 2021b, Algorithm 5 with :math:`\\alpha_i = 1`: the bars are batch means of the per-sample norms,
    so that the noise :math:`\\sqrt{2\\epsilon}\\,z` is about :math:`\\sqrt{2}\\, r` times the drift
    :math:`\\epsilon s`.

    Parameters
    ----------
    score : torch.Tensor
        The score :math:`s = \\nabla_x \\log p_t(x)` of the batch, shape (B, ...).
    noise : torch.Tensor
        Standard normal noise :math:`z` of the same shape.
    snr : float
        The signal-to-noise ratio :math:`r > 0` (Song et al. use 0.16 for VE, 0.01 for VP on images).

    Returns
    -------
    float
        The step size :math:`\\epsilon`.

    Raises
    ------
    ValueError
        If `snr` is not a positive number, the shapes differ, or the score is zero everywhere.
    """
    snr = check_number("snr", snr, low=0, low_open=True)
    check_tensor("score", score)
    check_tensor("noise", noise)
    if score.shape != noise.shape:
        raise ValueError(f"noise must have the score's shape {tuple(score.shape)}, got {tuple(noise.shape)}")
    if not bool(score.flatten(1).norm(dim=1).mean() > 0):
        raise ValueError("score is zero for the whole batch: the SNR rule gives no step size")
    return float(_step_size(score, noise, snr))


def _step_size(score, noise, snr):
    """The SNR rule as a 0-dim tensor on the score's device (no host sync); Song et al.'s code has the same form."""
    return 2 * (snr * noise.flatten(1).norm(dim=1).mean() / score.flatten(1).norm(dim=1).mean()) ** 2


def _correct(call, x, t, c, i, prediction, n_steps, snr, generator):
    """n_steps Langevin steps x <- x + eps s + sqrt(2 eps) z with the score of p_t (chapter 9, Eq. ch09-langevin-discrete)."""
    for _ in range(n_steps):
        _, eps_hat = to_pair(call(x, t, i), x, prediction, *c)
        score = -eps_hat / c[1]                                             # Tweedie: s = -eps / sigma
        z = randn(x.shape, generator, device=x.device, dtype=x.dtype)
        step = _step_size(score, z, snr)                                   # 0-dim, on x's device
        x = x + step * score + (2 * step).sqrt() * z
    return x


@torch.no_grad()
def langevin_correct(model, path, x: torch.Tensor, t: float, n_steps: int = 1, snr: float = 0.16,
                     prediction: str = "eps", cond=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Run the corrector alone: `n_steps` Langevin steps at the fixed time `t`, which leave :math:`p_t` (nearly) invariant.

    Each step is :math:`x \\leftarrow x + \\epsilon\\, s + \\sqrt{2\\epsilon}\\, z` with the model's score
    :math:`s = -\\hat\\epsilon / \\sigma(t)` and :math:`\\epsilon` from :func:`langevin_step_size`. For a
    Gaussian :math:`p_t = \\mathcal{N}(\\mu, v I)` and samples of variance :math:`V` the rule gives
    :math:`\\epsilon = 2 r^2 v^2 / V`, and the chain settles at :math:`V = (1 + r^2)\\, v`.

    Parameters
    ----------
    model : callable
        ``model(x, t, cond)`` returning a `prediction`, with float ``t`` of shape (B,).
    path : GaussianPath
        The path the model was trained on.
    x : torch.Tensor
        The samples to correct, shape (B, ...).
    t : float
        The time, in ``(0, 1]`` with :math:`\\sigma(t) > 0` and :math:`\\alpha(t) > 0`.
    n_steps : int
        Number of Langevin steps (network calls).
    snr : float
        Signal-to-noise ratio of the step-size rule.
    prediction : str
        What the model returns: "eps", "x0", "v", "score" or "velocity".
    cond : torch.Tensor or None
        Class labels passed to the model.
    generator : torch.Generator or None
        Source of the Langevin noise.

    Returns
    -------
    torch.Tensor
        The corrected samples, x's shape.

    Raises
    ------
    ValueError
        If `t` is outside (0, 1] or sigma(t) = 0, or `n_steps`, `snr`, `prediction` are invalid.
    """
    check_path(path)
    check_prediction(prediction)
    check_tensor("x", x)
    t = check_number("t", t, low=0, high=1, low_open=True)
    n_steps = check_int("n_steps", n_steps, low=1)
    check_number("snr", snr, low=0, low_open=True)
    check_generator(generator)
    c = coefficients(path, [t])[0]
    if c[1] == 0 or c[0] == 0:
        raise ValueError(f"t = {t} has sigma(t) = {c[1]:.4g}, alpha(t) = {c[0]:.4g}: the score is undefined there")
    _, call = start(model, x.shape, prediction, cond, generator, x, None, None, 1.0)
    x = _correct(call, x, t, c, 0, prediction, n_steps, snr, generator)
    call.finish()
    return x


@torch.no_grad()
def pc_sample(model, path, shape, steps: int = 100, corrector_steps: int = 1, snr: float = 0.16,
              predictor: str = "sde", prediction: str = "eps", cond=None, generator: torch.Generator | None = None,
              x_T: torch.Tensor | None = None, callback=None, *, device=None) -> torch.Tensor:
    """Predictor-corrector sampler over ``time_grid(path, steps)`` (Song et al. 2021b, Algorithm 1).

    The predictor is one Euler-Maruyama step of the reverse SDE (``"sde"``, as :func:`sde_sample`) or one Euler
    step of the probability-flow ODE (``"ode"``); after it, unless the new time is 0, `corrector_steps` Langevin
    steps at the new time (see :func:`langevin_correct`). The last step, into :math:`t = 0`, is the denoiser.
    With ``corrector_steps=0`` and ``predictor="sde"`` this is :func:`sde_sample` (same random numbers).

    Parameters
    ----------
    model : callable
        ``model(x, t, cond)`` returning a `prediction`, with float ``t`` of shape (B,).
    path : GaussianPath
        The path (``vp_path()``, ``ve_path()``, ``linear_path()``, ``schedule_path(s)``).
    shape : tuple of int
        Shape of the batch, (B, ...).
    steps : int
        Predictor steps; the network is called ``steps + corrector_steps * (steps - 1)`` times.
    corrector_steps : int
        Langevin steps after each predictor step (0 switches the corrector off).
    snr : float
        Signal-to-noise ratio :math:`r` of the corrector's step size :math:`2 (r \\|z\\| / \\|s\\|)^2`.
    predictor : str
        ``"sde"`` or ``"ode"``.
    prediction : str
        What the model returns: "eps", "x0", "v", "score" or "velocity".
    cond : torch.Tensor or None
        Class labels passed to the model.
    generator : torch.Generator or None
        Source of x_T (when not given) and of all noise.
    x_T : torch.Tensor or None
        The start at ``path.t_max``; default :math:`\\sigma(t_{max})\\,\\mathcal{N}(0, I)`.
    callback : callable or None
        Called after every predictor-corrector step with {"i", "t", "t_next", "x", "x0_hat"}.
    device : torch.device or None
        Where to sample when the model has no parameters.

    Returns
    -------
    torch.Tensor
        The samples at :math:`t = 0`, of shape `shape`.

    Raises
    ------
    ValueError
        For an invalid `steps`, `corrector_steps`, `snr`, `predictor` or `prediction`, a model output of the
        wrong shape or not finite.
    TypeError
        If `path` is not a diffusion_lab path.
    """
    check_path(path)
    steps = check_int("steps", steps, low=1)
    corrector_steps = check_int("corrector_steps", corrector_steps, low=0)
    snr = check_number("snr", snr, low=0, low_open=True)
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {PREDICTORS}, got {predictor!r}")
    check_start(path, prediction)
    x, call = start(model, shape, prediction, cond, generator, x_T, callback, device, float(path.sigma(path.t_max)))
    ts = time_grid(path, steps)
    C = coefficients(path, ts)
    t64 = torch.tensor(ts[:-1], dtype=torch.float64).clamp(min=1e-12)
    f, g2 = path.f(t64).tolist(), path.g2(t64).tolist()
    for i in range(steps):
        t, tn, c = ts[i], ts[i + 1], C[i]
        x0, eps = to_pair(call(x, t, i), x, prediction, *c)
        if tn == 0:
            x_new = x0                                                   # denoise
        else:
            h = tn - t                                                   # < 0
            if predictor == "sde":                                       # 1. reverse SDE, Euler-Maruyama
                score = -eps / c[1]
                x_new = x + (f[i] * x - g2[i] * score) * h \
                    + math.sqrt(g2[i] * -h) * randn(x.shape, generator, device=x.device, dtype=x.dtype)
            else:                                                        # 1. probability-flow ODE, Euler
                x_new = x + h * (c[2] * x0 + c[3] * eps)
            x_new = _correct(call, x_new, tn, C[i + 1], i, prediction, corrector_steps, snr, generator)  # 2.
        if callback is not None:
            callback({"i": i, "t": t, "t_next": tn, "x": x_new, "x0_hat": x0})
        x = x_new
    call.finish()
    return x
