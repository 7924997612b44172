"""A model trained on one Gaussian path used on another: every path x_t = alpha x0 + sigma eps reads
y = x0 + r eps in y = x / alpha and r = sigma / alpha, so E[eps | x_t] depends on the path only through r
(Kingma et al. 2021, Appendix; Karras et al. 2022, Sec. 4). Match r, rescale x, convert the prediction."""
from __future__ import annotations

import torch

from ._sampling import check_path
from .ddpm import _check_model
from .paths import check_time
from .predictions import check_prediction, convert_prediction


def change_path(model, src, dst, *, src_prediction: str, dst_prediction: str):
    """Wrap a model of the path `src` into a model of the path `dst`.

    At a time :math:`t` of `dst` the wrapper finds the time :math:`t'` of `src` with the same ratio
    :math:`r = \\sigma/\\alpha`, rescales the input to :math:`x' = x\\,\\alpha_{src}(t') / \\alpha_{dst}(t)`
    (the same :math:`y = x/\\alpha`), calls the model there, converts its output to
    :math:`\\hat\\epsilon`, which is the same on both paths, and converts that to `dst_prediction` at
    :math:`(x, t)`. With an exact model of `src` the result is the exact model of `dst`, and the
    probability-flow ODEs of the two paths carry the same start to the same samples.

    Parameters
    ----------
    model : callable
        ``model(x, t, cond=None)`` returning a `src_prediction` at float times ``t`` of shape ``(B,)`` on `src`.
    src, dst : GaussianPath
        The path the model was trained on and the path to use it on (``dl.vp_path()``, ``dl.linear_path()``, ...).
    src_prediction, dst_prediction : str
        What the model returns and what the wrapper returns: one of ``"eps"``, ``"x0"``, ``"v"``, ``"score"``,
        ``"velocity"``.

    Returns
    -------
    callable
        ``wrapped(x, t, cond=None)`` on `dst`, in x's dtype and on x's device (the time map is computed in
        float64 on the CPU).

    Raises
    ------
    TypeError
        If `model` is not callable, or `src` or `dst` is not a diffusion_lab path.
    ValueError
        If a prediction kind is unknown; when called, if :math:`\\alpha_{dst}(t) = 0` (pure noise: no ratio
        to match) or the ratio :math:`r` lies outside the range `src` covers between its ``t_min`` and ``t_max``.
    """
    _check_model(model)
    check_path(src)
    check_path(dst)
    check_prediction(src_prediction, "src_prediction")
    check_prediction(dst_prediction, "dst_prediction")

    def wrapped(x, t, cond=None):
        t64 = check_time(t).reshape(-1).expand(x.shape[0])          # (B,) float64 on the CPU
        a = dst.alpha(t64)
        if bool((a == 0).any()):
            raise ValueError(f"t must be where alpha(t) > 0 on dst (at t = {float(t64[a == 0][0]):.4g} the path "
                             "is pure noise); start the sampler below it, e.g. linear_path(t_max=0.999)")
        # 1. the time of src with the same r = sigma / alpha
        t_src = src.t_of_ratio(dst.sigma(t64) / a)
        # 2. the same y = x / alpha: x' = x alpha_src(t') / alpha_dst(t)
        scale = (src.alpha(t_src) / a).to(x.dtype).to(x.device)
        x_src = x * scale.reshape(-1, *([1] * (x.ndim - 1)))
        # 3. eps_hat is shared by the two paths; convert it to what dst's caller wants
        pred = model(x_src, t_src.to(x.dtype).to(x.device), cond)
        eps = convert_prediction(pred, x_src, t_src, src, src_prediction, "eps")
        return convert_prediction(eps, x, t64, dst, "eps", dst_prediction)

    wrapped.src, wrapped.dst = src, dst
    return wrapped
