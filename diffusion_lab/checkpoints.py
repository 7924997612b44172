"""Checkpoints: written atomically, read back with torch.load(weights_only=True), and a clear
error for a missing, corrupt or mismatched file. Pretrained checkpoints ship in the package."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from .flow import VelocityMLP, VelocityUNet
from .metrics import DigitsClassifier
from .nets import NoisyClassifier, TimeMLP, TokenMLP, UNet
from .score import ScoreMLP
from .vae import VAE

FORMAT = "diffusion_lab.checkpoint/1"
MODEL_CLASSES = {c.__name__: c for c in (TimeMLP, UNet, NoisyClassifier, ScoreMLP, VAE, DigitsClassifier,
                                          VelocityMLP, VelocityUNet, TokenMLP)}
PRETRAINED_DIR = Path(__file__).parent / "checkpoints"


def save_checkpoint(path, model: torch.nn.Module, meta: dict | None = None) -> Path:
    """Save a model (its class, constructor config and weights) plus a dict of plain metadata.

    The file is written atomically (to a temporary file, then renamed).

    Parameters
    ----------
    path : str or pathlib.Path
        Where to write.
    model : torch.nn.Module
        One of the package's model classes (:class:`TimeMLP`, :class:`UNet`, :class:`NoisyClassifier`,
        :class:`ScoreMLP`, :class:`VAE`, :class:`DigitsClassifier`, :class:`VelocityMLP`, :class:`VelocityUNet`).
    meta : dict, optional
        Plain metadata (numbers, strings, lists, dicts), e.g. the command that made it.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    TypeError
        If ``model`` is not one of the package's model classes.
    """
    name = type(model).__name__
    if name not in MODEL_CLASSES:
        raise TypeError(f"model must be one of {sorted(MODEL_CLASSES)}, got {name}")
    payload = {"format": FORMAT, "class": name, "config": dict(getattr(model, "config", {})),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": dict(meta or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)     # atomic: readers see the old file or the new one, never half of one
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_checkpoint(path, map_location="cpu"):
    """Load a model and its metadata from a file written by :func:`save_checkpoint`.

    Read with ``torch.load(weights_only=True)``; a missing, corrupt or mismatched file gets a clear error.

    Parameters
    ----------
    path : str or pathlib.Path
        The file.
    map_location : str or torch.device, optional
        Where to put the weights (default ``"cpu"``).

    Returns
    -------
    model : torch.nn.Module
        In eval mode.
    meta : dict

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not a readable diffusion_lab checkpoint, names an unknown model class, or its weights do
        not match the model.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{path} is not a readable diffusion_lab checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a diffusion_lab checkpoint (expected format {FORMAT!r})")
    cls = MODEL_CLASSES.get(payload.get("class"))
    if cls is None:
        raise ValueError(f"{path}: unknown model class {payload.get('class')!r}; known: {sorted(MODEL_CLASSES)}")
    model = cls(**payload["config"])
    missing, unexpected = [], []
    own = model.state_dict()
    for k, v in payload["state_dict"].items():
        if k not in own:
            unexpected.append(k)
        elif own[k].shape != v.shape:
            raise ValueError(f"{path}: weight {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    missing = [k for k in own if k not in payload["state_dict"]]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match {payload['class']}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(payload["state_dict"])
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval(), payload["meta"]


def pretrained_path(name: str) -> Path:
    path = PRETRAINED_DIR / f"{name}.pt"
    if not path.exists():
        have = sorted(p.stem for p in PRETRAINED_DIR.glob("*.pt"))
        raise ValueError(f"name must be one of the shipped checkpoints {have}, got {name!r}")
    return path


def load_pretrained(name: str, map_location="cpu"):
    """A checkpoint shipped with the package, in ``diffusion_lab/checkpoints/``.

    All are trained on scikit-learn's 8x8 digits: ``"digits_ddpm"``, ``"digits_cfg"``,
    ``"digits_noisy_classifier"``, ``"digits_judge"``, ``"digits_vae"``, ``"digits_flow"``. Each records the
    command that made it in ``meta["command"]``.

    Parameters
    ----------
    name : str
        The checkpoint's name.
    map_location : str or torch.device, optional
        Where to put the weights (default ``"cpu"``).

    Returns
    -------
    model : torch.nn.Module
        In eval mode.
    meta : dict

    Raises
    ------
    ValueError
        If ``name`` is not a shipped checkpoint.
    """
    return load_checkpoint(pretrained_path(name), map_location)
