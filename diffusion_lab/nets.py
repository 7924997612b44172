r"""Small networks sized for a laptop CPU: a time-conditioned MLP for vectors, a small U-Net
for images (any size :math:`\ge 4`, e.g. 8x8 and 28x28), and noise-aware classifiers :math:`p(c \mid x_t, t)`.

Denoisers output :math:`\hat\epsilon = x + f(x, t, c)` with :math:`f`'s last layer initialized to zero: at high
noise the true :math:`\epsilon` is almost exactly :math:`x_t`, and deterministic DDIM multiplies errors made there
by up to :math:`1/\sqrt{\bar\alpha_T}` (about 160 for the linear schedule), so the network is asked only
for the small correction. Without this skip a small MLP trained on 2-D toys gave DDPM samples
of good quality but DDIM samples several times too spread out.

Class conditioning uses a learned null label (index ``num_classes``) so one network is both
the conditional and the unconditional model, as classifier-free guidance needs
(Ho & Salimans 2021). Every denoiser follows ``model(x, t, cond=None) -> eps_hat``.
"""
from __future__ import annotations

import math
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._checks import check_int


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    r"""Sinusoidal embedding of (possibly fractional) timesteps (Vaswani et al. 2017, Sec. 3.5).

    Half the entries are :math:`\cos(t\,\omega_k)`, half :math:`\sin(t\,\omega_k)`, with frequencies
    :math:`\omega_k = P^{-k/\lfloor d/2 \rfloor}` (:math:`P` = ``max_period``), and a zero
    column when ``dim`` is odd.

    Parameters
    ----------
    t : torch.Tensor
        Timesteps, shape ``(B,)``, integer or float.
    dim : int
        Embedding size :math:`d`.
    max_period : float, optional
        The longest period (default 10000).

    Returns
    -------
    torch.Tensor
        Shape ``(B, dim)``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


class Conditioning(nn.Module):
    """Embeds (t, cond) into one vector; cond=None or entries equal to num_classes mean "no label"."""

    def __init__(self, emb_dim: int, num_classes: int | None = None):
        super().__init__()
        self.emb_dim = emb_dim
        self.num_classes = num_classes
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self._checked_cond = None   # (weak reference, version) of the last accelerator cond whose range was checked

    @property
    def null_label(self):
        return self.num_classes

    def forward(self, t: torch.Tensor, cond=None, batch: int | None = None) -> torch.Tensor:
        if t.ndim != 1:
            raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
        emb = self.time_mlp(timestep_embedding(t, self.emb_dim))
        if self.label_emb is None:
            if cond is not None:
                raise ValueError("cond given to a model built without num_classes")
            return emb
        if cond is None:
            cond = torch.full((t.shape[0],), self.num_classes, device=t.device, dtype=torch.long)
        if cond.shape != t.shape or cond.dtype.is_floating_point:
            raise ValueError(f"cond must be integer labels of shape {tuple(t.shape)}, got {tuple(cond.shape)} {cond.dtype}")
        # The range check reads the labels on the host. On the CPU that is free; on an accelerator it is a
        # device-to-host sync, and a sampler passes the same cond tensor at every step, so there it runs
        # once per cond tensor (and again if the tensor is modified in place: its version counter moves).
        # In training mode on an accelerator it is skipped: every batch brings new labels, and the package's
        # trainers check all labels once before the loop (an out-of-range label would still fail in the
        # embedding lookup, with the device's own index error).
        seen = self._checked_cond
        on_cpu = cond.device.type == "cpu"
        if on_cpu or (not self.training and (seen is None or seen[0]() is not cond or seen[1] != cond._version)):
            if int(cond.min()) < 0 or int(cond.max()) > self.num_classes:
                raise ValueError(f"cond labels must be in [0, {self.num_classes}] ({self.num_classes} = null), "
                                 f"got {cond.min().item()}..{cond.max().item()}")
            if cond.device.type != "cpu":
                self._checked_cond = (weakref.ref(cond), cond._version)
        return emb + self.label_emb(cond)


class ResMLPBlock(nn.Module):
    def __init__(self, hidden: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(emb_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h, emb):
        y = self.fc1(F.silu(self.norm(h))) + self.emb(emb)
        return h + self.fc2(F.silu(y))


class TimeMLP(nn.Module):
    r""":math:`\epsilon_\theta` for vector data: a residual MLP conditioned on :math:`t` (and a label).

    Maps ``(B, dim) -> (B, dim)``. With ``sample_shape`` (e.g. ``(1, 8, 8)`` and ``dim = 64``) it takes and
    returns ``(B, *sample_shape)``, flattening inside: on a CPU, a 64-pixel digit is cheaper to model as a
    vector than with convolutions. The output is :math:`x + f(x, t, c)` with :math:`f`'s last layer
    initialized to zero (see the module notes above). Follows the model contract
    ``model(x, t, cond=None) -> eps_hat``; ``cond`` equal to ``num_classes`` (or ``None``) is the learned
    null label.

    Parameters
    ----------
    dim : int, optional
        Data dimension (default 2).
    hidden : int, optional
        Width (default 128).
    depth : int, optional
        Number of residual blocks (default 3).
    emb_dim : int, optional
        Size of the time (and label) embedding, :math:`\ge 2` (default 64).
    num_classes : int, optional
        Number of classes for conditioning (default ``None``: unconditional).
    sample_shape : tuple of int, optional
        The shape of one sample if not ``(dim,)``; its entries must multiply to ``dim``.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If a size is not a positive integer, or ``sample_shape`` does not have ``dim`` entries.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, emb_dim: int = 64, num_classes: int | None = None,
                 sample_shape=None):
        super().__init__()
        sample_shape = (dim,) if sample_shape is None else tuple(int(s) for s in sample_shape)
        if math.prod(sample_shape) != dim:
            raise ValueError(f"sample_shape {sample_shape} must have dim = {dim} entries")
        self.config = dict(dim=check_int("dim", dim, low=1), hidden=check_int("hidden", hidden, low=1),
                           depth=check_int("depth", depth, low=1), emb_dim=check_int("emb_dim", emb_dim, low=2),
                           num_classes=num_classes, sample_shape=sample_shape)
        self.cond = Conditioning(emb_dim, num_classes)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList([ResMLPBlock(hidden, emb_dim) for _ in range(depth)])
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), _zero(nn.Linear(hidden, dim)))

    @property
    def num_classes(self):
        return self.config["num_classes"]

    def forward(self, x, t, cond=None):
        r"""The noise prediction :math:`\epsilon_\theta(x, t, c)`.

        Parameters
        ----------
        x : torch.Tensor
            Shape ``(B, dim)`` or ``(B, *sample_shape)``.
        t : torch.Tensor
            Timesteps, shape ``(B,)``.
        cond : torch.Tensor, optional
            Integer labels, shape ``(B,)``, in ``[0, num_classes]`` (``num_classes`` = no label).

        Returns
        -------
        torch.Tensor
            Of ``x``'s shape.

        Raises
        ------
        ValueError
            If ``x``, ``t`` or ``cond`` has the wrong shape, or a label is out of range.
        """
        shape = self.config["sample_shape"]
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, shape))}), got {tuple(x.shape)}")
        emb = self.cond(t, cond)
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return x + self.out(h).reshape(x.shape)


def _zero(layer: nn.Module) -> nn.Module:
    """Zero a layer's weights and bias so the residual path starts at exactly 0."""
    for p in layer.parameters():
        nn.init.zeros_(p)
    return layer


def _groups(ch: int) -> int:
    return math.gcd(8, ch)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class UNet(nn.Module):
    r"""A small U-Net :math:`\epsilon_\theta`: ``(B, C, H, W) -> (B, C, H, W)``.

    Downsamples by stride-2 convolutions and upsamples to the skip connection's exact size, so odd sizes
    (28 -> 14 -> 7 -> 4) work too; any size :math:`\ge 4` (e.g. 8x8 and 28x28). Conditioned on :math:`t` and
    an optional label like :class:`TimeMLP`, with the same skip :math:`x + f(x, t, c)`.

    Parameters
    ----------
    in_channels : int, optional
        Image channels :math:`C` (default 1).
    base : int, optional
        Channels at the first level (default 32).
    mults : tuple of int, optional
        Channel multipliers per level (default ``(1, 2, 2)``).
    emb_dim : int, optional
        Size of the time (and label) embedding (default 128).
    num_classes : int, optional
        Number of classes for conditioning (default ``None``).

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If a size is not a positive integer.
    """

    def __init__(self, in_channels: int = 1, base: int = 32, mults=(1, 2, 2), emb_dim: int = 128,
                 num_classes: int | None = None):
        super().__init__()
        self.config = dict(in_channels=check_int("in_channels", in_channels, low=1), base=check_int("base", base, low=1),
                           mults=tuple(int(m) for m in mults), emb_dim=check_int("emb_dim", emb_dim, low=2),
                           num_classes=num_classes)
        chans = [base * m for m in mults]
        self.cond = Conditioning(emb_dim, num_classes)
        self.inp = nn.Conv2d(in_channels, chans[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        c = chans[0]
        for i, ch in enumerate(chans):
            self.down_blocks.append(ResBlock(c, ch, emb_dim))
            c = ch
            if i < len(chans) - 1:
                self.downs.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = ResBlock(c, c, emb_dim)
        self.up_blocks = nn.ModuleList()
        for ch in reversed(chans):
            self.up_blocks.append(ResBlock(c + ch, ch, emb_dim))
            c = ch
        self.out = nn.Sequential(nn.GroupNorm(_groups(c), c), nn.SiLU(), _zero(nn.Conv2d(c, in_channels, 3, padding=1)))

    @property
    def num_classes(self):
        return self.config["num_classes"]

    def forward(self, x, t, cond=None):
        r"""The noise prediction :math:`\epsilon_\theta(x, t, c)`.

        Parameters
        ----------
        x : torch.Tensor
            Images, shape ``(B, C, H, W)``.
        t : torch.Tensor
            Timesteps, shape ``(B,)``.
        cond : torch.Tensor, optional
            Integer labels, shape ``(B,)``.

        Returns
        -------
        torch.Tensor
            Of ``x``'s shape.

        Raises
        ------
        ValueError
            If ``x`` does not have ``in_channels`` channels, or ``t``/``cond`` has the wrong shape.
        """
        if x.ndim != 4 or x.shape[1] != self.config["in_channels"]:
            raise ValueError(f"x must have shape (B, {self.config['in_channels']}, H, W), got {tuple(x.shape)}")
        emb = self.cond(t, cond)
        h = self.inp(x)
        skips = []
        for i, block in enumerate(self.down_blocks):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.downs):
                h = self.downs[i](h)
        h = self.mid(h, emb)
        for block in self.up_blocks:
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], 1), emb)
        return x + self.out(h)


class NoisyClassifier(nn.Module):
    r"""A noise-aware classifier, logits :math:`= f_\phi(x_t, t)`, for classifier guidance (Dhariwal & Nichol 2021).

    Vectors ``(B, dim)`` use a residual MLP; images ``(B, C, H, W)`` use the U-Net's encoder half followed by
    global average pooling.

    Parameters
    ----------
    shape : tuple of int
        One sample's shape, ``(dim,)`` or ``(C, H, W)``.
    num_classes : int
        Number of classes, :math:`\ge 2`.
    hidden, depth, emb_dim : int, optional
        The MLP's width, depth and embedding size (defaults 128, 3, 64).
    base : int, optional
        Channels of the convolutional encoder (default 32).
    arch : {"auto", "mlp", "conv"}, optional
        ``"auto"`` (default) picks by ``shape``.

    Raises
    ------
    TypeError
        If ``num_classes`` is not an integer.
    ValueError
        If ``shape`` is neither ``(dim,)`` nor ``(C, H, W)``, ``arch`` is unknown, or ``num_classes < 2``.
    """

    def __init__(self, shape, num_classes: int, hidden: int = 128, depth: int = 3, emb_dim: int = 64, base: int = 32,
                 arch: str = "auto"):
        super().__init__()
        shape = tuple(int(s) for s in shape)
        if arch not in ("auto", "mlp", "conv"):
            raise ValueError(f"arch must be 'auto', 'mlp' or 'conv', got {arch!r}")
        self.config = dict(shape=shape, num_classes=check_int("num_classes", num_classes, low=2), hidden=hidden,
                           depth=depth, emb_dim=emb_dim, base=base, arch=arch)
        self.cond = Conditioning(emb_dim, None)
        if len(shape) == 1 or arch == "mlp":
            self.inp = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), hidden))
            self.blocks = nn.ModuleList([ResMLPBlock(hidden, emb_dim) for _ in range(depth)])
            feat = hidden
        elif len(shape) == 3 and arch in ("auto", "conv"):
            self.inp = nn.Conv2d(shape[0], base, 3, padding=1)
            self.blocks = nn.ModuleList([ResBlock(base, base, emb_dim), ResBlock(base, 2 * base, emb_dim),
                                         ResBlock(2 * base, 2 * base, emb_dim)])
            self.pool = nn.Conv2d(2 * base, 2 * base, 3, stride=2, padding=1)
            feat = 2 * base
        else:
            raise ValueError(f"shape must be (dim,) or (C, H, W), got {shape}")
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(feat, num_classes))

    def forward(self, x, t):
        """Class logits for noisy inputs.

        Parameters
        ----------
        x : torch.Tensor
            Shape ``(B, *shape)``.
        t : torch.Tensor
            Timesteps, shape ``(B,)``.

        Returns
        -------
        torch.Tensor
            Logits, shape ``(B, num_classes)``.

        Raises
        ------
        ValueError
            If ``x`` or ``t`` has the wrong shape.
        """
        if tuple(x.shape[1:]) != self.config["shape"]:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.config['shape']))}), got {tuple(x.shape)}")
        emb = self.cond(t)
        h = self.inp(x)
        for i, block in enumerate(self.blocks):
            h = block(h, emb)
            if h.ndim == 4 and i == 1:
                h = self.pool(h)
        if h.ndim == 4:
            h = h.mean(dim=(2, 3))
        return self.head(h)


def make_denoiser(sample_shape, num_classes: int | None = None, arch: str = "auto", **kwargs) -> nn.Module:
    """A denoiser for samples of ``sample_shape``: a :class:`TimeMLP` for vectors, a :class:`UNet` for images.

    ``arch="mlp"`` gives images a :class:`TimeMLP` over the flattened pixels (much cheaper on a CPU for the
    8x8 digits).

    Parameters
    ----------
    sample_shape : tuple of int
        One sample's shape: ``(dim,)`` or ``(C, H, W)``.
    num_classes : int, optional
        Number of classes for conditioning (default ``None``).
    arch : {"auto", "mlp", "unet"}, optional
        ``"auto"`` (default) picks by the shape.
    **kwargs
        Passed to the network's constructor (e.g. ``hidden=256``).

    Returns
    -------
    torch.nn.Module
        A model following ``model(x, t, cond=None) -> eps_hat``.

    Raises
    ------
    ValueError
        If ``arch`` is unknown, or ``sample_shape`` is neither ``(dim,)`` nor ``(C, H, W)``.
    """
    sample_shape = tuple(int(s) for s in sample_shape)
    if arch not in ("auto", "mlp", "unet"):
        raise ValueError(f"arch must be 'auto', 'mlp' or 'unet', got {arch!r}")
    if len(sample_shape) == 1 or arch == "mlp":
        return TimeMLP(dim=math.prod(sample_shape), num_classes=num_classes, sample_shape=sample_shape, **kwargs)
    if len(sample_shape) == 3:
        return UNet(in_channels=sample_shape[0], num_classes=num_classes, **kwargs)
    raise ValueError(f"data must be (N, D) vectors or (N, C, H, W) images; a sample has shape {sample_shape}")


class TokenMLP(nn.Module):
    """Logits for discrete tokens (masked diffusion, `masked.py`).

    Maps ``(B, *sample_shape)`` long in [0, K] (K = mask) to ``(B, *sample_shape, K)``. Each token is embedded
    (``token_dim`` numbers), the embeddings are flattened, and a residual MLP conditioned on (t, label) maps them
    to K logits per position. t is a float in [0, 1], scaled by 1000 for the sinusoidal embedding (tuned to
    integer steps). Follows the contract ``model(x_t, t, cond=None) -> logits`` of `masked.py`; ``cond`` equal to
    ``num_classes`` (or ``None``) is the learned null label.

    Parameters
    ----------
    sample_shape : tuple of int, optional
        The shape of one sample of tokens (default ``(64,)``); each entry >= 1.
    K : int, optional
        Number of data categories, >= 2 (default 17); the mask is token K.
    hidden : int, optional
        Width (default 256).
    depth : int, optional
        Number of residual blocks (default 3).
    emb_dim : int, optional
        Size of the time (and label) embedding, >= 2 (default 64).
    token_dim : int, optional
        Size of each token's embedding (default 16).
    num_classes : int, optional
        Number of classes for conditioning (default ``None``: unconditional).

    Raises
    ------
    TypeError
        If a size is not an integer.
    ValueError
        If a size is below its minimum; in the forward pass, if x is not integer tokens of shape
        ``(B, *sample_shape)``.
    """

    def __init__(self, sample_shape=(64,), K: int = 17, hidden: int = 256, depth: int = 3, emb_dim: int = 64,
                 token_dim: int = 16, num_classes: int | None = None):
        super().__init__()
        sample_shape = tuple(check_int("sample_shape entry", s, low=1) for s in sample_shape)
        self.config = dict(sample_shape=sample_shape, K=check_int("K", K, low=2), hidden=check_int("hidden", hidden, low=1),
                           depth=check_int("depth", depth, low=1), emb_dim=check_int("emb_dim", emb_dim, low=2),
                           token_dim=check_int("token_dim", token_dim, low=1), num_classes=num_classes)
        L = math.prod(sample_shape)
        self.embed = nn.Embedding(K + 1, token_dim)
        self.cond = Conditioning(emb_dim, num_classes)
        self.inp = nn.Linear(L * token_dim, hidden)
        self.blocks = nn.ModuleList([ResMLPBlock(hidden, emb_dim) for _ in range(depth)])
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, L * K))

    @property
    def num_classes(self):
        return self.config["num_classes"]

    def forward(self, x, t, cond=None):
        shape = self.config["sample_shape"]
        if tuple(x.shape[1:]) != shape or x.dtype.is_floating_point:
            raise ValueError(f"x must be integer tokens of shape (B, {', '.join(map(str, shape))}), "
                             f"got {tuple(x.shape)} {x.dtype}")
        emb = self.cond(t * 1000, cond)
        h = self.inp(self.embed(x).flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h).reshape(*x.shape, self.config["K"])
