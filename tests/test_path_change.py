"""dl.change_path: a model of one Gaussian path used on another. Oracle checks with a Gaussian mixture, whose exact
model is known on every path; the closed-form LinearPath.t_of_ratio against the generic bisection; bad input."""
import math

import pytest
import torch

import diffusion_lab as dl
from diffusion_lab.paths import GaussianPath

MIX = dl.GaussianMixture([[-1.0, 0.5], [1.5, -0.5], [0.0, 1.5]], stds=[0.3, 0.5, 0.4], weights=[0.3, 0.3, 0.4])
PATHS = {"vp": dl.vp_path(), "linear": dl.linear_path(), "ve": dl.ve_path(sigma_min=0.02, sigma_max=20.0)}


def _points(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 2.0 * torch.randn(n, 2, generator=g, dtype=torch.float64), 0.05 + 0.9 * torch.rand(n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("src,dst", [("vp", "linear"), ("linear", "vp"), ("ve", "linear"), ("linear", "ve")])
@pytest.mark.parametrize("src_pred,dst_pred", [("eps", "velocity"), ("velocity", "eps"), ("x0", "score")])
def test_the_exact_model_of_one_path_becomes_the_exact_model_of_the_other(src, dst, src_pred, dst_pred):
    """Changing the mixture's exact src-model to dst gives its exact dst-model (float64, 1e-8). Catches a wrong time
    map (t itself instead of the t with the same sigma/alpha), a missing rescaling of x by alpha_src / alpha_dst
    (both off by O(1) except where the paths agree), and a conversion on the wrong path's coefficients."""
    s, d = PATHS[src], PATHS[dst]
    x, t = _points()
    r = d.sigma(t) / d.alpha(t)
    keep = (r >= s.sigma(s.t_min) / s.alpha(s.t_min)) & (r <= s.sigma(s.t_max) / s.alpha(s.t_max))  # src covers r
    assert int(keep.sum()) >= 32
    x, t = x[keep], t[keep]
    changed = dl.change_path(MIX.path_model(s, src_pred), s, d, src_prediction=src_pred, dst_prediction=dst_pred)
    torch.testing.assert_close(changed(x, t), MIX.path_model(d, dst_pred)(x, t), rtol=1e-8, atol=1e-8)


def test_without_rescaling_the_check_fails():
    """The plant the test above guards against: the VP eps-oracle called at the matched time but the unscaled x
    differs from the linear path's exact eps by far more than the tolerance."""
    vp, lin = PATHS["vp"], PATHS["linear"]
    x, t = _points()
    eps_vp = MIX.path_model(vp, "eps")
    t_vp = vp.t_of_ratio(lin.sigma(t) / lin.alpha(t))
    wrong = eps_vp(x, t_vp)
    assert float((wrong - MIX.path_model(lin, "eps")(x, t)).abs().max()) > 0.1


def test_linear_t_of_ratio_closed_form_matches_the_bisection():
    lin = dl.linear_path(t_max=0.999)
    r = torch.tensor([0.0, 1e-3, 0.5, 1.0, 7.0, 300.0, 0.999 / 0.001], dtype=torch.float64)
    torch.testing.assert_close(lin.t_of_ratio(r), GaussianPath.t_of_ratio(lin, r), rtol=0, atol=1e-12)
    assert float(dl.linear_path().t_of_ratio(math.inf)) == 1.0
    with pytest.raises(ValueError, match="r must be in this path's range"):
        lin.t_of_ratio(1e4)
    with pytest.raises(ValueError, match="r must be in this path's range"):
        lin.t_of_ratio(-0.1)


def test_the_two_probability_flow_odes_give_the_same_samples():
    """The mixture's exact linear-path velocity, changed to a VP eps-model, sampled with dl.ode_sample on the VP path
    from s = 1, and the linear path's own sampler from the t with the same sigma/alpha: same samples up to the
    solvers' errors (RK4, 100 steps; measured 3.7e-5 against a spread of 1.03; a wrong time map gives O(1))."""
    vp, lin = PATHS["vp"], PATHS["linear"]
    r1 = float(vp.sigma(1.0) / vp.alpha(1.0))
    t1 = r1 / (1 + r1)
    z = torch.randn(200, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v_lin = MIX.path_model(lin, "velocity")
    x_vp = dl.ode_sample(dl.change_path(v_lin, lin, vp, src_prediction="velocity", dst_prediction="eps"), vp,
                         (200, 2), steps=100, method="rk4", x_T=float(vp.sigma(1.0)) * z)
    x_lin = dl.ode_sample(v_lin, dl.linear_path(t_max=t1), (200, 2), steps=100, method="rk4", prediction="velocity",
                          x_T=t1 * z)
    assert float((x_vp - x_lin).abs().max()) < 1e-3 * float(x_lin.std())


def test_bad_input():
    model = MIX.path_model(PATHS["linear"], "velocity")
    with pytest.raises(TypeError, match="path must be a diffusion_lab path"):
        dl.change_path(model, "linear", PATHS["vp"], src_prediction="velocity", dst_prediction="eps")
    with pytest.raises(TypeError, match="model must be callable"):
        dl.change_path(None, PATHS["linear"], PATHS["vp"], src_prediction="velocity", dst_prediction="eps")
    with pytest.raises(ValueError, match="src_prediction must be one of"):
        dl.change_path(model, PATHS["linear"], PATHS["vp"], src_prediction="noise", dst_prediction="eps")
    with pytest.raises(ValueError, match="dst_prediction must be one of"):
        dl.change_path(model, PATHS["linear"], PATHS["vp"], src_prediction="velocity", dst_prediction="flow")
    to_linear = dl.change_path(MIX.path_model(PATHS["vp"], "eps"), PATHS["vp"], PATHS["linear"],
                               src_prediction="eps", dst_prediction="velocity")
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="alpha\\(t\\) > 0"):
        to_linear(x, torch.tensor([0.5, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="r must be in this path's range"):    # r = 1e-4 is below VP's t_min
        to_linear(x, torch.tensor([1e-4, 0.5], dtype=torch.float64))


# ---- found by mutation testing (issue 17) -----------------------------------------------------------------------
def test_pure_noise_message_names_the_first_bad_t():
    to_linear = dl.change_path(MIX.path_model(PATHS["vp"], "eps"), PATHS["vp"], PATHS["linear"],
                               src_prediction="eps", dst_prediction="velocity")
    with pytest.raises(ValueError) as e:
        to_linear(torch.zeros(2, 2, dtype=torch.float64), torch.tensor([0.5, 1.0], dtype=torch.float64))
    assert str(e.value) == ("t must be where alpha(t) > 0 on dst (at t = 1 the path is pure noise); start the "
                            "sampler below it, e.g. linear_path(t_max=0.999)")


def test_the_model_gets_x_and_t_in_x_dtype_and_the_cond():
    """A float32 call stays float32 (the float64 time map is cast before the model sees x' or t'), and cond reaches
    the model. The output is checked against the same chain written out for the linear -> VP change of an
    eps-model that returns cond: t' = r / (1 + r) with r = sigma / alpha of VP at t, x' = x (1 - t') / alpha(t)."""
    seen = []

    def eps_model(x, t, cond=None):
        seen.append((x.dtype, t.dtype, cond))
        return cond[:, None].expand_as(x)

    vp, lin = PATHS["vp"], PATHS["linear"]
    wrapped = dl.change_path(eps_model, lin, vp, src_prediction="eps", dst_prediction="eps")
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    cond = torch.tensor([0.1, -0.2, 0.3, 0.0])
    out = wrapped(x, torch.full((4,), 0.4), cond)
    assert seen[-1][:2] == (torch.float32, torch.float32) and seen[-1][2] is cond and out.dtype == torch.float32
    torch.testing.assert_close(out, cond[:, None].expand_as(x))        # eps is the same on both paths


def test_change_path_on_the_simulated_device():
    """On the simulated accelerator of tests/test_device_discipline.py: the model of src on the device gets x' and t'
    there (the float64 time map cast and moved once, no float64 on the device) and the result is the CPU's."""
    from test_device_discipline import FAKE, OnDevice, _ct_net, run_on_device, to_host

    def call(device):
        net = _ct_net().to(device)
        wrapped = dl.change_path(net, PATHS["vp"], PATHS["linear"], src_prediction="eps", dst_prediction="velocity")
        x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
        return wrapped(x.to(device), torch.linspace(0.2, 0.8, 8).to(device))
    with torch.no_grad():
        out, rec = run_on_device(lambda: call(FAKE))
        ref = call("cpu")
    assert isinstance(out, OnDevice) and not rec.float64, rec.float64[:3]
    torch.testing.assert_close(to_host(out), ref, rtol=0, atol=0)
