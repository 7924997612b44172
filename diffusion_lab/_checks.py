"""Argument validation shared by the whole package.

Every public function calls these so that bad input fails early with a message that
names the argument, the value it got and what is allowed (never a silent NaN).
"""
from __future__ import annotations

import math
import numbers

import torch


def _show(value) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() <= 6:
            return f"tensor({value.detach().cpu().tolist()})"
        return f"tensor of shape {tuple(value.shape)}"
    return repr(value)


def check_tensor(name: str, x, *, finite: bool = True, floating: bool = True) -> torch.Tensor:
    """Require a tensor (floating point and finite by default)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not torch.is_floating_point(x):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if finite and floating and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} must be finite, got {bad} non-finite value(s) (NaN or inf) in a tensor of shape {tuple(x.shape)}")
    return x


def check_number(name: str, value, *, low=None, high=None, low_open=False, high_open=False) -> float:
    """Require a finite real number in [low, high] (open ends where asked)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_show(value)} ({type(value).__name__})")
    value = float(value)
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    allowed = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite and in {allowed}, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be in {allowed}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be in {allowed}, got {value}")
    return value


def check_int(name: str, value, *, low=None, high=None) -> int:
    """Require an integer in [low, high]."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not torch.is_floating_point(value):
        value = int(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {_show(value)} ({type(value).__name__})")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        allowed = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ValueError(f"{name} must be an integer in {allowed}, got {value}")
    return value


def check_same_shape(**tensors: torch.Tensor) -> None:
    names = list(tensors)
    first = tensors[names[0]]
    for n in names[1:]:
        if tensors[n].shape != first.shape:
            raise ValueError(f"{n} must have the same shape as {names[0]} {tuple(first.shape)}, got {tuple(tensors[n].shape)}")


def check_same_device(**tensors: torch.Tensor) -> None:
    names = list(tensors)
    first = tensors[names[0]]
    for n in names[1:]:
        if tensors[n].device != first.device:
            raise ValueError(f"{n} must be on the same device as {names[0]} ({first.device}), got {tensors[n].device}")


def check_broadcastable(**tensors: torch.Tensor) -> None:
    try:
        torch.broadcast_shapes(*(t.shape for t in tensors.values()))
    except RuntimeError:
        shapes = ", ".join(f"{n}={tuple(t.shape)}" for n, t in tensors.items())
        raise ValueError(f"shapes must broadcast together, got {shapes}") from None


def check_shape(name: str, shape) -> tuple:
    """Require a non-empty tuple of positive ints (a tensor shape)."""
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)) or len(shape) == 0:
        raise TypeError(f"{name} must be a non-empty tuple of positive integers, got {shape!r}")
    for s in shape:
        check_int(f"{name} entry", s, low=1)
    return tuple(int(s) for s in shape)


def check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def check_callback(callback) -> None:
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")


def randn(shape, generator: torch.Generator | None, *, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise drawn from `generator` (on the generator's device) and moved to `device`.

    Drawing on the generator's own device keeps a seeded run identical whether the
    tensors live on the CPU or a GPU.
    """
    check_generator(generator)
    gen_device = generator.device if generator is not None else torch.device(device)
    z = torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype)
    return z.to(device, non_blocking=True)   # host-to-device: no need to wait for the device's queue


class FiniteWatch:
    """Stops a loop whose model returns NaN or inf, naming the step, without a device-to-host sync
    per step. On the CPU the check is immediate (reading a value is free there). On an accelerator the
    index of the first bad step stays on the device and `done()` reads it once, after the loop; the
    loop runs to its end on NaNs first, then raises the same error."""

    def __init__(self, device, message):
        self.message = message                 # message(where) -> the error text
        self.on_cpu = torch.device(device).type == "cpu"
        self.wheres = []
        self.first_bad = None if self.on_cpu else torch.full((), -1, dtype=torch.long, device=device)

    def check(self, out: torch.Tensor, where) -> None:
        if self.on_cpu:
            if not bool(torch.isfinite(out).all()):
                raise ValueError(self.message(where))
            return
        bad = ~torch.isfinite(out).all()
        self.first_bad = torch.where(bad & (self.first_bad < 0), len(self.wheres), self.first_bad)
        self.wheres.append(where)

    def done(self) -> None:
        if not self.on_cpu and self.wheres:
            i = int(self.first_bad)             # the one sync, after the loop
            if i >= 0:
                raise ValueError(self.message(self.wheres[i]))


def check_noise(noise, xt: torch.Tensor, required: str):
    """The noise a stochastic step adds: required (else ValueError with the message `required`), finite,
    of xt's shape and on xt's device."""
    if noise is None:
        raise ValueError(required)
    check_tensor("noise", noise)
    if noise.shape != xt.shape:
        raise ValueError(f"noise must have xt's shape {tuple(xt.shape)}, got {tuple(noise.shape)}")
    check_same_device(xt=xt, noise=noise)
