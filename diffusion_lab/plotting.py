"""Small plotting helpers shared by the chapters: the book's matplotlib style,
figure -> PNG bytes (for widget frames), an image grid and a 2-D scatter plot."""
from __future__ import annotations

import io
import math

import matplotlib
import matplotlib.pyplot as plt
import torch
from PIL import Image

from ._checks import check_int, check_number

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def set_style(dpi: int = 90) -> None:
    """Set the matplotlib defaults every chapter uses: small figures, a light grid, no top/right spines.

    Parameters
    ----------
    dpi : int, optional
        Figure and savefig resolution, in ``[20, 600]`` (default 90).

    Returns
    -------
    None

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        If ``dpi`` is not an integer in range.
    """
    check_int("dpi", dpi, low=20, high=600)
    matplotlib.rcParams.update({
        "figure.figsize": (6.0, 3.6),
        "figure.dpi": dpi,
        "savefig.dpi": dpi,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "legend.frameon": False,
        "font.size": 10,
    })


def fig_to_png(fig: matplotlib.figure.Figure, *, dpi: float = 80, colors: int | None = 64,
               close: bool = True) -> bytes:
    """Render a matplotlib figure to small PNG bytes (for widget frames) and close it.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure.
    dpi : float, optional
        Resolution, in ``[10, 600]`` (default 80).
    colors : int or None, optional
        Reduce the image to a palette of that many colours, in ``[2, 256]`` (default 64, which keeps line
        plots crisp at about a third of the size); ``None`` keeps full RGBA.
    close : bool, optional
        Close the figure afterwards (default ``True``).

    Returns
    -------
    bytes
        The PNG file's bytes.

    Raises
    ------
    TypeError
        If ``fig`` is not a matplotlib Figure.
    ValueError
        If ``dpi`` or ``colors`` is out of range.
    """
    if not isinstance(fig, matplotlib.figure.Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    check_number("dpi", dpi, low=10, high=600)
    if colors is not None:
        check_int("colors", colors, low=2, high=256)
    buf = io.BytesIO()
    # metadata={"Software": None}: no matplotlib version in the file, so frames are reproducible.
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    if close:
        plt.close(fig)
    if colors is None:
        return buf.getvalue()
    img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    out = io.BytesIO()
    img.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(out, format="PNG", optimize=True)
    return out.getvalue()


def image_grid(images: torch.Tensor, nrow: int | None = None, *, value_range=(-1.0, 1.0),
               ax=None, cmap: str = "gray", title: str | None = None):
    r"""Show a batch of images as one grid.

    Pixel values are clipped to ``value_range`` and rescaled to :math:`[0, 1]`.

    Parameters
    ----------
    images : torch.Tensor
        Shape ``(B, H, W)`` or ``(B, C, H, W)`` with ``C`` 1 or 3.
    nrow : int, optional
        Images per row (default: about :math:`\sqrt{B}`).
    value_range : tuple of float, optional
        ``(low, high)`` with ``high > low`` (default ``(-1, 1)``).
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: a new figure).
    cmap : str, optional
        Colour map for one channel (default ``"gray"``).
    title : str, optional
        Axes title.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    TypeError
        If ``images`` is not a tensor.
    ValueError
        If its shape or ``value_range`` is invalid.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(1)  # (B, 1, H, W)
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"images must have shape (B, H, W) or (B, C, H, W) with B >= 1 and C in (1, 3), "
                         f"got {tuple(images.shape)}")
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    b, c, h, w = images.shape
    nrow = math.ceil(math.sqrt(b)) if nrow is None else check_int("nrow", nrow, low=1)
    ncol_rows = math.ceil(b / nrow)
    x = ((images.detach().float().cpu().clamp(lo, hi) - lo) / (hi - lo))  # (B, C, H, W) in [0, 1]
    pad = 1
    grid = torch.ones(c, ncol_rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(b):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top:top + h, left:left + w] = x[i]
    if ax is None:
        _, ax = plt.subplots(figsize=(0.6 * nrow + 0.4, 0.6 * ncol_rows + 0.4))
    if c == 1:
        ax.imshow(grid[0].numpy(), cmap=cmap, vmin=0.0, vmax=1.0)
    else:
        ax.imshow(grid.permute(1, 2, 0).numpy())
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return ax


def scatter2d(x: torch.Tensor, *, ax=None, s: float = 2.0, alpha: float = 0.5, lim: float | None = None,
              title: str | None = None, **kwargs):
    r"""Scatter plot of 2-D points with equal axis scales.

    Parameters
    ----------
    x : torch.Tensor
        Points, shape ``(N, 2)``.
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: a new figure).
    s, alpha : float, optional
        Marker size and opacity (defaults 2.0 and 0.5).
    lim : float, optional
        Show :math:`[-\text{lim}, \text{lim}]^2`, :math:`\text{lim} > 0`.
    title : str, optional
        Axes title.
    **kwargs
        Passed to ``ax.scatter``.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    TypeError
        If ``x`` is not a tensor.
    ValueError
        If ``x`` is not of shape ``(N, 2)`` or ``lim`` is not positive.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != 2:
        raise ValueError(f"x must have shape (N, 2), got {tuple(x.shape)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(3.6, 3.6))
    pts = x.detach().float().cpu().numpy()
    ax.scatter(pts[:, 0], pts[:, 1], s=s, alpha=alpha, **kwargs)
    ax.set_aspect("equal")
    if lim is not None:
        lim = check_number("lim", lim, low=0, low_open=True)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    if title is not None:
        ax.set_title(title)
    return ax
