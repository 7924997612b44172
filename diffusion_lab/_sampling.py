"""Plumbing shared by the continuous-time samplers: validate once per call, draw the start, call the model
with cheap per-step checks (shape on the host; finiteness at once on the CPU, one sync at the end elsewhere)."""
from __future__ import annotations

import torch

from ._checks import check_callback, check_generator, check_shape, check_tensor, randn
from .ddpm import _check_cond, _check_model, model_device
from .paths import GaussianPath
from .predictions import check_prediction


def check_path(path) -> GaussianPath:
    if not isinstance(path, GaussianPath):
        raise TypeError(f"path must be a diffusion_lab path (vp_path(), ve_path(), linear_path(), schedule_path(s)), "
                        f"got {type(path).__name__}")
    return path


class ModelCaller:
    """model(x, t, cond) at a float time for the whole batch; an output of the wrong shape or a
    non-finite one stops the sampler with an error naming the step and t."""

    def __init__(self, model, cond, shape, device):
        self.model, self.cond, self.shape = model, cond, tuple(shape)
        self.sync_free = torch.device(device).type != "cpu"
        self.flags = []
        self.time_dtype = None          # None: t in x's dtype (continuous time); torch.long for integer timesteps

    def __call__(self, x: torch.Tensor, t: float, step: int) -> torch.Tensor:
        out = self.model(x, torch.full((x.shape[0],), t, dtype=self.time_dtype or x.dtype, device=x.device), self.cond)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != self.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"model output at step {step} (t = {t:.4g}) must have shape {self.shape}, got {got}")
        finite = torch.isfinite(out).all()
        if self.sync_free:
            self.flags.append((step, t, finite))
        elif not bool(finite):
            self.fail(step, t)
        return out

    def fail(self, step, t):
        raise ValueError(f"model output at step {step} (t = {t:.4g}) is not finite (NaN or inf): "
                         "the model is broken or diverged")

    def finish(self):
        """Raise for the first non-finite output (one host sync for the whole run on an accelerator)."""
        if self.flags and not bool(torch.stack([f for _, _, f in self.flags]).all()):
            step, t, _ = next(f for f in self.flags if not bool(f[2]))
            self.fail(step, t)


def start(model, shape, prediction, cond, generator, x_T, callback, device, scale: float, name: str = "x_T"):
    """Validate the common arguments; return (x at the start, ModelCaller). x_T defaults to scale * N(0, I);
    `name` is what the messages call it (ode_solve's start is its argument x)."""
    _check_model(model)
    check_prediction(prediction)
    shape = check_shape("shape", shape)
    _check_cond(cond, shape[0])
    check_generator(generator)
    check_callback(callback)
    device = model_device(model, device)
    if x_T is None:
        x = scale * randn(shape, generator, device=device)
    else:
        check_tensor(name, x_T, finite=False)
        if tuple(x_T.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(x_T.shape)}")
        if x_T.device != device:
            raise ValueError(f"{name} must be on the model's device {device}, got {x_T.device}")
        check_tensor(name, x_T)
        x = x_T
    return x, ModelCaller(model, cond, shape, device)
