"""Unit tests of diffusion_lab.widgets and diffusion_lab.plotting (frames -> Stack + jslinked sliders)."""
import io

import ipywidgets as W
from ipywidgets.widgets.widget_link import DirectionalLink, Link
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from diffusion_lab.plotting import PNG_MAGIC, fig_to_png, image_grid, scatter2d, set_style  # noqa: E402
from diffusion_lab.widgets import frame_grid, frame_slider  # noqa: E402


def figure(k: float) -> matplotlib.figure.Figure:
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [0, k])
    ax.set_title(f"k={k}")
    return fig


def png(k: float) -> bytes:
    return fig_to_png(figure(k))


def link_pairs(box):
    return [((l.source[0], l.source[1]), (l.target[0], l.target[1])) for l in box.links]


# --------------------------------------------------------------------------- plotting
def test_fig_to_png_gives_small_png_and_closes_the_figure():
    fig = figure(1.0)
    n_open = len(plt.get_fignums())
    data = fig_to_png(fig, dpi=50)
    assert data[:8] == PNG_MAGIC
    assert len(plt.get_fignums()) == n_open - 1
    img = Image.open(io.BytesIO(data))
    assert img.size == (100, 75)            # 2 x 1.5 inches at 50 dpi
    assert img.mode == "P"                  # palette (64 colours by default)
    full = Image.open(io.BytesIO(fig_to_png(figure(1.0), dpi=50, colors=None)))
    assert full.mode == "RGBA" and full.size == (100, 75)


def test_fig_to_png_is_deterministic_and_can_keep_the_figure_open():
    fig = figure(2.0)
    a = fig_to_png(fig, close=False)
    assert plt.fignum_exists(fig.number)
    assert fig_to_png(fig) == a


@pytest.mark.parametrize("kwargs, name", [({"dpi": 0}, "dpi"), ({"colors": 1}, "colors"), ({"colors": 1000}, "colors")])
def test_fig_to_png_bad_arguments(kwargs, name):
    fig = figure(1.0)
    with pytest.raises(ValueError, match=name):
        fig_to_png(fig, **kwargs)
    plt.close(fig)


def test_fig_to_png_rejects_non_figures():
    with pytest.raises(TypeError, match="fig"):
        fig_to_png(b"not a figure")


def test_set_style_and_helpers_draw():
    set_style(dpi=72)
    assert matplotlib.rcParams["figure.dpi"] == 72
    with pytest.raises(ValueError, match="dpi"):
        set_style(dpi=5)
    ax = image_grid(torch.rand(5, 1, 8, 8) * 2 - 1, nrow=3, title="grid")
    assert ax.get_images()[0].get_array().shape == (2 * 9 + 1, 3 * 9 + 1)  # 2 rows x 3 columns of 8 px + 1 px gaps
    ax2 = scatter2d(torch.randn(50, 2), lim=3.0)
    assert ax2.get_xlim() == (-3.0, 3.0)
    plt.close("all")
    with pytest.raises(ValueError, match="images"):
        image_grid(torch.rand(8, 8))
    with pytest.raises(ValueError, match="x must have shape"):
        scatter2d(torch.randn(5, 3))


# --------------------------------------------------------------------------- frame_slider
def test_frame_slider_structure_and_link():
    frames = [png(k) for k in range(4)]
    box = frame_slider(frames, [0.5, 1.0, 1.5, 2.0], "scale", initial=2)
    slider, stack = box.children
    assert isinstance(box, W.VBox) and isinstance(slider, W.SelectionSlider) and isinstance(stack, W.Stack)
    assert slider.options == ("0.5", "1", "1.5", "2") and slider.index == 2 and slider.description == "scale"
    assert len(stack.children) == 4 and stack.selected_index == 2
    assert [im.value for im in stack.children] == frames            # frame i is shown for values[i]
    assert all(isinstance(im, W.Image) and im.format == "png" for im in stack.children)
    assert link_pairs(box) == [((slider, "index"), (stack, "selected_index"))]
    assert isinstance(box.links[0], Link)                       # a jslink (client side), not a Python link


def test_frame_slider_accepts_figures_and_closes_them():
    figs = [figure(k) for k in range(3)]
    n_open = len(plt.get_fignums())
    box = frame_slider(figs, ["a", "b", "c"], "letter")
    assert len(plt.get_fignums()) == n_open - 3
    assert all(im.value[:8] == PNG_MAGIC for im in box.children[1].children)


@pytest.mark.parametrize("frames, values, match", [
    ([b"x"], [1], "frames\\[0\\]"),                  # bytes that are not a PNG
    (["nope"], [1], "frames\\[0\\]"),                # not a frame at all
    (None, [1], "frames"),                           # not a sequence
    ("abc", ["a", "b", "c"], "frames"),              # a string is not a list of frames
    ([], [], "values"),                              # empty
    ([b""], [1, 2], "frames"),                       # wrong count (checked against values)
    ([b"", b""], [1.0, 1], "values"),                # labels collide ("1" twice)
    ([b""], "a", "values"),                          # a string is not a list of values
])
def test_frame_slider_bad_input(frames, values, match):
    frames = [png(0) if f == b"" else f for f in frames] if isinstance(frames, list) else frames
    with pytest.raises(ValueError, match=match):
        frame_slider(frames, values, "d")


def test_frame_slider_bad_initial():
    with pytest.raises(ValueError, match="initial"):
        frame_slider([png(0), png(1)], [0, 1], "d", initial=2)


# --------------------------------------------------------------------------- frame_grid
def test_frame_grid_structure_and_links():
    va, vb = [1, 2, 3], [0.1, 0.2]
    frames = [[png(a * 10 + b) for b in range(len(vb))] for a in range(len(va))]
    box = frame_grid(frames, va, vb, "a", "b", initial=(1, 0))
    slider_a, slider_b, outer = box.children
    assert (slider_a.description, slider_b.description) == ("a", "b")
    assert slider_a.options == ("1", "2", "3") and slider_b.options == ("0.1", "0.2")
    assert (slider_a.index, slider_b.index) == (1, 0)
    assert slider_a.style.description_width == slider_b.style.description_width   # tracks line up
    assert isinstance(outer, W.Stack) and len(outer.children) == 3 and outer.selected_index == 1
    for i, inner in enumerate(outer.children):
        assert isinstance(inner, W.Stack) and inner.selected_index == 0
        assert [im.value for im in inner.children] == frames[i]     # frames_2d[i][j] <-> (values_a[i], values_b[j])
    expected = [((slider_a, "index"), (outer, "selected_index"))]
    expected += [((slider_b, "index"), (inner, "selected_index")) for inner in outer.children]
    assert link_pairs(box) == expected


def test_frame_grid_links_are_kernel_free_jslinks():
    box = frame_grid([[png(0)], [png(1)]], [0, 1], ["x"], "a", "b")
    assert all(isinstance(l, Link) and not isinstance(l, DirectionalLink) for l in box.links)
    # the state a static page embeds contains the links
    state = W.Widget.get_manager_state(widgets=[box, *box.links])["state"]
    assert sum(s["model_name"] == "LinkModel" for s in state.values()) == 3


@pytest.mark.parametrize("frames, match", [
    ([[b""]], "frames_2d must have one row per entry of values_a"),
    ([[b""], [b"", b""]], "frames_2d\\[1\\]"),
    (None, "frames_2d"),
])
def test_frame_grid_bad_input(frames, match):
    frames = [[png(0) for _ in row] for row in frames] if isinstance(frames, list) else frames
    with pytest.raises(ValueError, match=match):
        frame_grid(frames, [0, 1], ["x"], "a", "b")


def test_frame_grid_bad_values_and_initial():
    frames = [[png(0)], [png(1)]]
    with pytest.raises(ValueError, match="values_b"):
        frame_grid(frames, [0, 1], [], "a", "b")
    with pytest.raises(ValueError, match="values_a"):
        frame_grid(frames, [0, 0], ["x"], "a", "b")
    with pytest.raises(ValueError, match="initial"):
        frame_grid(frames, [0, 1], ["x"], "a", "b", initial=(0, 1))
    with pytest.raises(ValueError, match="initial"):
        frame_grid(frames, [0, 1], ["x"], "a", "b", initial=0)
