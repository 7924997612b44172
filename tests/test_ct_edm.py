"""EDM (Karras et al. 2022): the survivors of the mutation run on edm.py (issue 17). Algorithm 2's churn with the
default churn range replayed by hand in float64 (closed-form denoiser of N(0, I) data), the default start drawn from
the generator, the documented argument checks with their exact messages, the single-level and path-top edge cases,
and a parameterless model sampled on the simulated accelerator of test_device_discipline.py."""
import math
import re

import pytest
import torch

import diffusion_lab as dl


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _x0_model(path, calls=None):
    """Exact x0-prediction for data N(0, I): x_t = alpha x0 + sigma eps gives E[x0 | x_t] = alpha x_t / (alpha^2 + sigma^2),
    i.e. D(x~; s) = x~ / (1 + s^2) in EDM's x~ = x / alpha, s = sigma / alpha. Records (t, cond) of every call."""
    def model(x, t, cond=None):
        if calls is not None:
            calls.append((t.clone(), cond))
        a, s = path.alpha(t), path.sigma(t)
        return (a / (a * a + s * s)).to(x.dtype)[:, None] * x
    return model


def _edm_by_hand(x, sig, churn, s_noise, method, g, s_tmin=0.0, s_tmax=math.inf):
    """Karras et al. 2022, Algorithm 2 written out (Algorithm 1 when churn = 0) with D(x~; s) = x~ / (1 + s^2):
    gamma = min(churn / N, sqrt 2 - 1) for s_tmin <= s <= s_tmax, s_hat = (1 + gamma) s,
    x <- x + sqrt(s_hat^2 - s^2) s_noise z, then Euler (Heun: the trapezoid) from s_hat to the next level, 0 last.
    Returns the result and the (x, x0_hat) after each step."""
    levels, steps = list(sig) + [0.0], []
    for i in range(len(sig)):
        s, s_next = levels[i], levels[i + 1]
        gamma = min(churn / len(sig), math.sqrt(2) - 1) if s_tmin <= s <= s_tmax else 0.0
        s_hat = (1 + gamma) * s
        if gamma > 0:
            x = x + math.sqrt(s_hat ** 2 - s ** 2) * s_noise * torch.randn(x.shape, generator=g, dtype=x.dtype)
        x0 = x / (1 + s_hat ** 2)
        d = (x - x0) / s_hat
        x_new = x + (s_next - s_hat) * d
        if method == "heun" and s_next > 0:
            d2 = (x_new - x_new / (1 + s_next ** 2)) / s_next
            x_new = x + (s_next - s_hat) * (d + d2) / 2
        steps.append((x_new, x0))
        x = x_new
    return x, steps


@pytest.mark.parametrize("method", ["heun", "euler"])
def test_edm_default_churn_range_and_float64_gamma_replayed_by_hand(method):
    """Churn with the default range [s_tmin, s_tmax] = [0, inf] (every level churned, the last one 0.4 < 1 too) and
    gamma = churn / N = 1/3, which float32 cannot hold (rounded, it moves s_hat by 3e-8 relative and the samples by
    about 1e-8): the float64 sampler must agree with the float64 replay to 1e-11. Also: cond reaches every call, the
    callback's x is the step's result and x0_hat the denoiser at s_hat, and the last step returns x0_hat."""
    path, sig, churn, s_noise = dl.vp_path(), [3.0, 1.5, 0.4], 1.0, 0.9
    x_T = 3.0 * torch.randn(4, 2, generator=_gen(70), dtype=torch.float64)
    cond, calls, seen = torch.tensor([0, 1, 1, 0]), [], []
    out = dl.edm_sample(_x0_model(path, calls), path, (4, 2), sig, prediction="x0", cond=cond, x_T=x_T,
                        generator=_gen(71), callback=seen.append, method=method, churn=churn, s_noise=s_noise)
    ref, steps = _edm_by_hand(x_T.clone(), sig, churn, s_noise, method, _gen(71))
    torch.testing.assert_close(out, ref, rtol=1e-11, atol=1e-11)
    assert len(calls) == (5 if method == "heun" else 3) and all(c is cond for _, c in calls)
    assert [(c["i"], c["sigma"], c["sigma_next"]) for c in seen] == [(0, 3.0, 1.5), (1, 1.5, 0.4), (2, 0.4, 0.0)]
    for c, (x, x0) in zip(seen, steps):
        torch.testing.assert_close(c["x"], x, rtol=1e-11, atol=1e-11)
        torch.testing.assert_close(c["x0_hat"], x0, rtol=1e-11, atol=1e-11)
    assert torch.equal(seen[-1]["x"], out)


def test_edm_default_start_is_sigma_0_times_noise_from_the_generator():
    """x_T defaults to sigmas[0] N(0, I) drawn from `generator` (the churn noise follows from the same generator):
    the run equals one given that start, drawn by hand."""
    path, sig = dl.ve_path(), [20.0, 2.0, 0.1]
    model = _x0_model(path)
    out = dl.edm_sample(model, path, (5, 2), sig, prediction="x0", generator=_gen(72), churn=1.5)
    g = _gen(72)
    x_T = 20.0 * torch.randn(5, 2, generator=g)
    ref = dl.edm_sample(model, path, (5, 2), sig, prediction="x0", x_T=x_T, generator=g, churn=1.5)
    assert out.dtype == torch.float32 and torch.equal(out, ref)


def test_edm_single_level_and_a_start_at_the_top_of_the_path():
    """One level is allowed (one Euler step to 0: the denoiser); starting exactly at the path's largest sigma/alpha
    is allowed (t = t_max), with and without churn outside the range (s_tmax below the first level)."""
    path = dl.vp_path()
    x_T = torch.randn(3, 2, generator=_gen(73), dtype=torch.float64)
    out = dl.edm_sample(_x0_model(path), path, (3, 2), [2.0], prediction="x0", x_T=x_T)
    torch.testing.assert_close(out, x_T / 5.0, rtol=1e-12, atol=1e-12)
    top = float(path.sigma(path.t_max) / path.alpha(path.t_max))             # 152.17
    for kw in ({}, {"churn": 2.0, "s_tmax": 100.0}):
        calls = []
        out = dl.edm_sample(_x0_model(path, calls), path, (3, 2), [top, 1.0], prediction="x0", x_T=top * x_T,
                            method="euler", generator=_gen(74), **kw)
        assert abs(float(calls[0][0][0]) - path.t_max) < 1e-9 and bool(torch.isfinite(out).all())


def _m(x, t, cond=None):
    return torch.zeros_like(x)


@pytest.mark.parametrize("call, match", [
    (lambda: dl.karras_sigmas(5, sigma_max=0.0), r"^sigma_max must be in \(0, inf\], got 0.0$"),
    (lambda: dl.karras_sigmas(5, sigma_max=-1.0), r"^sigma_max must be in \(0, inf\], got -1.0$"),
    (lambda: dl.edm_sample(_m, dl.vp_path(), (4, 2), []), r"^sigmas must be positive and strictly decreasing "
                                                          r"\(a final 0 is added\), got \[\]$"),
    (lambda: dl.edm_sample(_m, dl.vp_path(), (4, 2), [2.0, 0.0]), r"^sigmas must be positive and strictly "
                                                                  r"decreasing \(a final 0 is added\), got \[2.0, 0.0\]$"),
    (lambda: dl.edm_sample(_m, dl.vp_path(), (4, 2), [2.0, -1.0]), r"^sigmas must .*, got \[2.0, -1.0\]$"),
    (lambda: dl.edm_sample(_m, dl.vp_path(), (4, 2), [2.0, 2.0]), r"^sigmas must .*, got \[2.0, 2.0\]$"),
    (lambda: dl.edm_sample(_m, dl.vp_path(), (4, 2), [5.0, 1.0, 3.0]), r"^sigmas must .*, got \[5.0, 1.0, 3.0\]$"),
    (lambda: dl.edm_sample(_m, dl.vp_path(), (4, 2), [8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 3.0, 1.0]),
     r"^sigmas must .*, got \[8.0, 7.0, 6.0, 5.0, 4.0, 3.0\]$"),
    (lambda: dl.edm_sample(_m, dl.vp_path(), (4, 2), [5.0, float("nan")]),
     r"^sigmas must be finite, got 1 non-finite value\(s\) \(NaN or inf\) in a tensor of shape \(2,\)$"),
    (lambda: dl.edm_sample(_m, dl.linear_path(), (4, 2), [5.0, 1.0]),
     r"^prediction 'eps' cannot give x0 where alpha\(t\) = 0 \(t_max = 1.0\)"),
    (lambda: dl.edm_sample(_m, dl.vp_path(), (4, 2), [150.0, 1.0], churn=2.0),
     r"^churn = 2.0 raises the noise level to 212.1, above this path's largest sigma/alpha 152.2: "
     r"lower churn or s_tmax, or start from smaller sigmas$"),
    (lambda: dl.edm_sample(_m, dl.vp_path(), (4, 2), [5.0, 1.0], callback=5), r"^callback must be callable or None, got int$"),
])
def test_edm_bad_input_messages_found_by_mutation(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_karras_sigmas_two_levels_are_the_ends():
    """n = 2: the ramp i / (n - 1) is 0 and 1, so the levels are exactly sigma_max and sigma_min (Eq. 5)."""
    s = dl.karras_sigmas(2, sigma_min=0.5, sigma_max=10.0, rho=3.0)
    torch.testing.assert_close(s, torch.tensor([10.0, 0.5], dtype=torch.float64), rtol=1e-14, atol=0)


def test_heun_correction_failure_names_its_step():
    """A model that breaks at Heun's second evaluation of step 1 (the call at sigma_2) is reported at step 1 and
    the time it was called with."""
    path, ts = dl.vp_path(), []

    def model(x, t, cond=None):
        ts.append(float(t[0]))
        return x * float("nan") if len(ts) == 4 else torch.zeros_like(x)
    with pytest.raises(ValueError) as err:
        dl.edm_sample(model, path, (4, 2), [5.0, 2.0, 0.8], prediction="x0", generator=_gen(75))
    assert str(err.value) == (f"model output at step 1 (t = {ts[3]:.4g}) is not finite (NaN or inf): "
                              "the model is broken or diverged")


def test_edm_parameterless_model_samples_on_the_given_device():
    """device= is where a model without parameters is sampled (simulated accelerator of test_device_discipline)."""
    from test_device_discipline import FAKE, OnDevice, run_on_device
    out, rec = run_on_device(lambda: dl.edm_sample(lambda x, t, cond=None: 0.5 * x, dl.vp_path(), (4, 2),
                                                    [5.0, 1.0], generator=_gen(76), device=FAKE))
    assert isinstance(out, OnDevice) and not rec.float64
