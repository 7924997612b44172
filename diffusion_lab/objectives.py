"""Training objectives as choices of prediction target on a Gaussian path: each is a weighting of the eps-loss
over log-SNR (Kingma & Gao 2023, Sec. 2-3), EDM's preconditioning from unit-variance targets (Karras et al. 2022,
Appendix B.6), and a trainer for any path and target."""
from __future__ import annotations

import torch

from ._checks import check_number, check_tensor, randn
from ._sampling import check_path
from .flow import make_velocity_net
from .predictions import check_prediction, from_pair, path_coefficients
from .train import TrainConfig, _check_data, _config, fit, setup


def eps_loss_weight(path, prediction: str, t) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight density w(lambda) that training `prediction` with t ~ U(t_min, t_max) puts on the eps-loss:
    E_t |pred_hat - pred|^2 = int w(lambda) |eps_hat - eps|^2 d lambda, lambda = log(alpha^2 / sigma^2).

    Parameters
    ----------
    path : GaussianPath
    prediction : {"eps", "x0", "v", "score", "velocity"}
    t : float or torch.Tensor
        Times in (t_min, t_max) where 0 < sigma and 0 < alpha.

    Returns
    -------
    (lambda, w) : tuple of float64 tensors
        w = k(t)^2 / (|d lambda / dt| (t_max - t_min)), where k = d pred / d eps at fixed x_t is 1 (eps),
        sigma/alpha (x0), (alpha^2 + sigma^2)/alpha (v), 1/sigma (score), sigma' - alpha' sigma/alpha (velocity).
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
    """EDM's (c_skip, c_out, c_in, c_noise) at noise level sigma (Karras et al. 2022, Table 1 and Eq. 7),
    for D(x; sigma) = c_skip x + c_out F(c_in x, c_noise) with x = x0 + sigma n and Var[x0] = sigma_data^2:
    c_in makes the network's input unit-variance, c_skip minimises c_out, c_out makes F's target unit-variance.

    Returns
    -------
    tuple of four float64 tensors, shaped like sigma:
    sigma_data^2 / (sigma^2 + sigma_data^2), sigma sigma_data / sqrt(sigma^2 + sigma_data^2),
    1 / sqrt(sigma^2 + sigma_data^2), log(sigma) / 4.
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
    """Mean squared error of model(x_t, t, cond) against the `prediction` target of (x0, eps), with
    x_t = alpha(t) x0 + sigma(t) eps, eps ~ N(0, I), t ~ U(t_min, t_max) (float t, shape (B,)). A scalar."""
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
    """Train a network (make_velocity_net: float t in [0, 1]) to predict `prediction` on `path` with path_loss,
    in train_ddpm's loop (TrainConfig: steps, batch size, lr, EMA, seed). Unconditional.
    Returns (model, losses); sample with ode_sample(model, path, shape, prediction=prediction)."""
    config = _config(config, overrides)
    _check_data(data)
    check_path(path)
    check_prediction(prediction)
    model, device, x_all, _, _ = setup(data, None, config, model,
                                       lambda k: make_velocity_net(data.shape[1:], **config.net), device)

    def loss_fn(idx, g):
        return _path_loss(model, path, prediction, x_all[idx.to(device)], g, None)
    return fit(model, loss_fn, config, data.shape[0], desc=f"train {prediction}", callback=callback)
