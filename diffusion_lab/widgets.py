"""Widgets that stay interactive on the static website, where no kernel runs.

Frames are precomputed (PNG images), put in an `ipywidgets.Stack`, and each slider's
`index` is `jslink`-ed to a Stack's `selected_index`. A jslink lives in the browser, so
it keeps working once the widget state is embedded in a page (and live in Jupyter/Colab).
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence

import ipywidgets as W
import matplotlib.figure

from .plotting import PNG_MAGIC, fig_to_png


def _label(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        return f"{float(v):g}"
    raise TypeError(f"slider values must be numbers or strings, got {v!r} ({type(v).__name__})")


def _labels(name: str, values) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of numbers or strings, got {values!r}")
    labels = [_label(v) for v in values]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{name} must be distinct once shown as labels, got {labels}")
    return labels


def _png(name: str, frame, dpi: float) -> bytes:
    if isinstance(frame, matplotlib.figure.Figure):
        return fig_to_png(frame, dpi=dpi, close=True)
    if isinstance(frame, (bytes, bytearray)) and bytes(frame[:8]) == PNG_MAGIC:
        return bytes(frame)
    raise ValueError(f"{name} must be PNG bytes or a matplotlib Figure, got {type(frame).__name__}"
                     + (" that is not a PNG" if isinstance(frame, (bytes, bytearray)) else ""))


def _frames(name: str, frames, n: int, values_name: str, dpi: float) -> list[bytes]:
    if isinstance(frames, (str, bytes)) or not isinstance(frames, Sequence):
        raise ValueError(f"{name} must be a sequence of frames, got {type(frames).__name__}")
    if len(frames) != n:
        raise ValueError(f"{name} must have one frame per entry of {values_name} ({n}), got {len(frames)}")
    return [_png(f"{name}[{i}]", f, dpi) for i, f in enumerate(frames)]


def _slider(labels: list[str], description: str, initial: int, label_width: str = "initial") -> W.SelectionSlider:
    if not isinstance(description, str):
        raise TypeError(f"description must be a string, got {type(description).__name__}")
    if isinstance(initial, bool) or not isinstance(initial, numbers.Integral) or not 0 <= initial < len(labels):
        raise ValueError(f"initial index must be an integer in [0, {len(labels) - 1}], got {initial!r}")
    return W.SelectionSlider(options=labels, index=int(initial), description=description,
                             continuous_update=True, style={"description_width": label_width},
                             layout=W.Layout(width="520px", max_width="100%"))


def _stack(pngs: list[bytes], initial: int) -> W.Stack:
    return W.Stack([W.Image(value=p, format="png") for p in pngs], selected_index=initial)


def frame_slider(frames, values, description: str, *, initial: int = 0, dpi: float = 80) -> W.VBox:
    """One slider over precomputed frames: frame ``i`` is shown when the slider reads ``values[i]``.

    The slider's index is ``jslink``-ed to an ``ipywidgets.Stack``'s ``selected_index``, so it works on the
    static site without a kernel.

    Parameters
    ----------
    frames : sequence
        PNG bytes or matplotlib Figures (rendered at ``dpi`` and closed), one per value.
    values : sequence of float or str
        The slider's labels, distinct once shown.
    description : str
        The slider's label (plain text or Unicode, not ``$...$``).
    initial : int, optional
        The index shown first (default 0).
    dpi : float, optional
        Resolution for Figures (default 80).

    Returns
    -------
    ipywidgets.VBox
        ``VBox([slider, stack])``; ``box.links`` holds the jslink.

    Raises
    ------
    TypeError
        If ``description`` is not a string or a value is neither a number nor a string.
    ValueError
        If the frames and values differ in number, a frame is neither PNG bytes nor a Figure, the labels
        are not distinct, or ``initial`` is out of range.
    """
    labels = _labels("values", values)
    pngs = _frames("frames", frames, len(labels), "values", dpi)
    slider = _slider(labels, description, initial)
    stack = _stack(pngs, initial)
    box = W.VBox([slider, stack])
    box.links = [W.jslink((slider, "index"), (stack, "selected_index"))]
    return box


def frame_grid(frames_2d, values_a, values_b, desc_a: str, desc_b: str, *,
               initial: tuple[int, int] = (0, 0), dpi: float = 80) -> W.VBox:
    """Two sliders over a grid of frames: ``frames_2d[i][j]`` is shown for ``(values_a[i], values_b[j])``.

    Built as an outer Stack (selected by slider a) of inner Stacks, all of which follow slider b.

    Parameters
    ----------
    frames_2d : sequence of sequence
        One row of frames per entry of ``values_a``, one frame per entry of ``values_b``.
    values_a, values_b : sequence of float or str
        The two sliders' labels.
    desc_a, desc_b : str
        The two sliders' descriptions.
    initial : tuple of int, optional
        The indices ``(i, j)`` shown first (default ``(0, 0)``).
    dpi : float, optional
        Resolution for Figures (default 80).

    Returns
    -------
    ipywidgets.VBox
        ``VBox([slider_a, slider_b, outer_stack])``; ``box.links`` holds the jslinks.

    Raises
    ------
    TypeError
        If an argument is not of the type documented above.
    ValueError
        As for :func:`frame_slider`, and if ``frames_2d`` is not rows of frames matching the values.
    """
    labels_a = _labels("values_a", values_a)
    labels_b = _labels("values_b", values_b)
    if isinstance(frames_2d, (str, bytes)) or not isinstance(frames_2d, Sequence):
        raise ValueError(f"frames_2d must be a sequence of rows of frames, got {type(frames_2d).__name__}")
    if len(frames_2d) != len(labels_a):
        raise ValueError(f"frames_2d must have one row per entry of values_a ({len(labels_a)}), got {len(frames_2d)}")
    rows = [_frames(f"frames_2d[{i}]", row, len(labels_b), "values_b", dpi) for i, row in enumerate(frames_2d)]
    if not (isinstance(initial, tuple) and len(initial) == 2):
        raise ValueError(f"initial must be a pair of indices (i, j), got {initial!r}")
    # One label width for both sliders, so that their tracks line up.
    width = f"{0.6 * max(len(str(desc_a)), len(str(desc_b))) + 1:.1f}em"
    slider_a = _slider(labels_a, desc_a, initial[0], width)
    slider_b = _slider(labels_b, desc_b, initial[1], width)
    inner = [_stack(row, initial[1]) for row in rows]
    outer = W.Stack(inner, selected_index=initial[0])
    box = W.VBox([slider_a, slider_b, outer])
    box.links = [W.jslink((slider_a, "index"), (outer, "selected_index"))]
    box.links += [W.jslink((slider_b, "index"), (s, "selected_index")) for s in inner]
    return box
