"""Reference checks against diffusers' DDPMScheduler and DDIMScheduler (a test-only dependency).

diffusers keeps its schedule in float32 while ours is float64. The schedules are compared
at float32 precision; the step formulas are compared in float64 by loading our float64
schedule into the diffusers scheduler (so a disagreement is a formula or index difference,
not rounding), and again in float32 where 1 - alpha_bar is not tiny; the sampling loops run
in float32 end to end.
"""
import pytest
import torch

import diffusion_lab as dl

diffusers = pytest.importorskip("diffusers")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _ddpm_scheduler(T, kind, variance_type="fixed_small", beta_start=1e-4, beta_end=0.02):
    return diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=kind, beta_start=beta_start, beta_end=beta_end,
                                   variance_type=variance_type, clip_sample=False, prediction_type="epsilon")


def _ddim_scheduler(T, spacing, beta_start=1e-4, beta_end=0.02):
    return diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=beta_start,
                                   beta_end=beta_end, set_alpha_to_one=True, clip_sample=False,
                                   prediction_type="epsilon", timestep_spacing=spacing, steps_offset=0)


def _in_float64(ref, s):
    """Give a diffusers scheduler our float64 schedule (same values, diffusers' own step code)."""
    ref.betas = s.betas.clone()
    ref.alphas = s.alphas.clone()
    ref.alphas_cumprod = s.alpha_bars.clone()
    ref.one = torch.tensor(1.0, dtype=torch.float64)           # DDPMScheduler's alpha_bar below t = 0
    ref.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)  # DDIMScheduler's (set_alpha_to_one)
    return ref


# ---------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("T, beta_start, beta_end", [(10, 1e-3, 0.2), (1000, 1e-4, 0.02)])
def test_linear_alpha_bars_equal_diffusers(T, beta_start, beta_end):
    ref = _ddpm_scheduler(T, "linear", beta_start=beta_start, beta_end=beta_end)
    s = dl.linear_schedule(T, beta_start, beta_end)
    torch.testing.assert_close(s.betas.float(), ref.betas, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(s.alpha_bars.float(), ref.alphas_cumprod, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("T", [10, 1000])
def test_cosine_alpha_bars_equal_diffusers_squaredcos_cap_v2(T):
    ref = _ddpm_scheduler(T, "squaredcos_cap_v2")
    s = dl.cosine_schedule(T)
    torch.testing.assert_close(s.betas.float(), ref.betas, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(s.alpha_bars.float(), ref.alphas_cumprod, rtol=1e-4, atol=1e-9)


def test_q_sample_equals_add_noise():
    ref = _ddpm_scheduler(1000, "linear")
    s = dl.linear_schedule()
    g = _gen(0)
    x0, noise = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    t = torch.tensor([0, 1, 400, 998, 999])
    torch.testing.assert_close(dl.q_sample(s, x0, t, noise), ref.add_noise(x0, noise, t), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# DDPM step
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, make", [("linear", dl.linear_schedule), ("squaredcos_cap_v2", dl.cosine_schedule)])
@pytest.mark.parametrize("variance_type, variance", [("fixed_small", "posterior"), ("fixed_large", "beta")])
@pytest.mark.parametrize("t", [0, 1, 2, 500, 998, 999])
def test_ddpm_step_equals_diffusers_float64(kind, make, variance_type, variance, t):
    s = make(1000)
    ref = _in_float64(_ddpm_scheduler(1000, kind, variance_type), s)
    g = _gen(t)
    x, eps = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(2))
    out = ref.step(eps, t, x, generator=_gen(99))
    # diffusers draws its noise with randn_tensor(shape, generator) only when t > 0; on the CPU
    # that is torch.randn with the same generator, so a fresh generator with the same seed
    # reproduces the draw.
    noise = torch.randn(4, 3, generator=_gen(99), dtype=torch.float64) if t > 0 else None
    x_prev, x0_hat = dl.ddpm_step(s, x, eps, t, noise, variance=variance)
    torch.testing.assert_close(x0_hat, out.pred_original_sample, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(dl.predict_x0(s, x, eps, t), out.pred_original_sample, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x_prev, out.prev_sample, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("variance_type, variance", [("fixed_small", "posterior"), ("fixed_large", "beta")])
@pytest.mark.parametrize("t", [100, 500, 999])
def test_ddpm_step_equals_diffusers_float32(variance_type, variance, t):
    # Both sides in float32 with their own schedules; t >= 100 keeps 1 - alpha_bar >= 0.06, so
    # float32 rounding of the coefficients is ~1e-6 relative.
    ref = _ddpm_scheduler(1000, "linear", variance_type)
    s = dl.linear_schedule()
    g = _gen(t)
    x, eps = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    out = ref.step(eps, t, x, generator=_gen(98))
    x_prev, x0_hat = dl.ddpm_step(s, x, eps, t, torch.randn(4, 3, generator=_gen(98)), variance=variance)
    scale = float(1 / s.alpha_bars[t].sqrt())  # x0_hat divides by sqrt(alpha_bar): errors scale with it
    torch.testing.assert_close(x0_hat, out.pred_original_sample, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(x_prev, out.prev_sample, rtol=1e-5, atol=1e-5 * scale)


def test_ddpm_sampling_loop_equals_diffusers():
    # Whole ancestral loop with the same generator: x_T first, then one draw per step t >= 1.
    T = 100
    ref = _ddpm_scheduler(T, "linear", beta_start=1e-3, beta_end=0.1)
    s = dl.linear_schedule(T, 1e-3, 0.1)
    model = lambda x, t, cond=None: 0.5 * torch.tanh(x) + 1e-3 * t.float()[:, None]  # noqa: E731
    ours = dl.ddpm_sample(model, s, (6, 2), generator=_gen(5))
    g = _gen(5)
    x = torch.randn(6, 2, generator=g)
    for t in range(T - 1, -1, -1):
        x = ref.step(model(x, torch.full((6,), t)), t, x, generator=g).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------
# DDIM
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", ["trailing", "leading"])
@pytest.mark.parametrize("T, steps", [(1000, 50), (1000, 10), (1000, 3), (1000, 7), (1000, 1000), (1000, 1), (10, 4)])
def test_ddim_timesteps_equal_diffusers(T, steps, spacing):
    ref = _ddim_scheduler(T, spacing)
    ref.set_timesteps(steps)
    assert dl.ddim_timesteps(T, steps, spacing) == ref.timesteps.tolist()


@pytest.mark.parametrize("spacing", ["trailing", "leading"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("steps", [50, 7])
def test_ddim_step_equals_diffusers(spacing, eta, steps):
    T = 1000
    s = dl.linear_schedule(T)
    ref = _in_float64(_ddim_scheduler(T, spacing), s)
    ref.set_timesteps(steps)
    g = _gen(steps)
    for t in ref.timesteps.tolist():
        x, eps, z = (torch.randn(3, 2, generator=g, dtype=torch.float64) for _ in range(3))
        out = ref.step(eps, t, x, eta=eta, variance_noise=z)
        # diffusers steps to t - T // steps (the final alpha_bar is 1 below zero).
        t_prev = max(t - T // steps, -1)
        ours = dl.ddim_step(s, x, eps, t, t_prev, eta=eta, noise=z)
        torch.testing.assert_close(ours, out.prev_sample, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(dl.predict_x0(s, x, eps, t), out.pred_original_sample, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_sampling_loop_equals_diffusers(eta):
    # 20 of 1000 steps, trailing: T is a multiple of steps, so diffusers' t - T // steps is
    # exactly our next timestep and the two loops take the same path, draw for draw.
    T, steps = 1000, 20
    ref = _ddim_scheduler(T, "trailing")
    ref.set_timesteps(steps)
    s = dl.linear_schedule(T)
    model = lambda x, t, cond=None: 0.5 * torch.tanh(x) + 1e-4 * t.float()[:, None]  # noqa: E731
    ours = dl.ddim_sample(model, s, (6, 2), steps=steps, eta=eta, generator=_gen(6))
    g = _gen(6)
    x = torch.randn(6, 2, generator=g)
    for t in ref.timesteps.tolist():
        x = ref.step(model(x, torch.full((6,), t)), t, x, eta=eta, generator=g if eta > 0 else None).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_with_clipping_equals_diffusers_clip_sample(eta):
    # Our clipped step clips the predicted x0 and re-derives eps from it (as GLIDE does): that is
    # diffusers' clip_sample with use_clipped_model_output=True. (Clipping x0 but keeping the raw
    # eps, diffusers' default, turned CFG digits at scale 3 into noise in our experiments.)
    T, steps = 1000, 50
    s = dl.linear_schedule(T)
    ref = diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", set_alpha_to_one=True,
                                  clip_sample=True, clip_sample_range=1.0, prediction_type="epsilon",
                                  timestep_spacing="trailing", steps_offset=0)
    ref = _in_float64(ref, s)
    ref.set_timesteps(steps)
    g = _gen(11)
    clipped = 0
    for t in ref.timesteps.tolist():
        x, eps, z = (2 * torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(3))
        clipped += int((dl.predict_x0(s, x, eps, t).abs() > 1).any())
        out = ref.step(eps, t, x, eta=eta, variance_noise=z / 2, use_clipped_model_output=True)
        ours = dl.ddim_step(s, x, eps, t, max(t - T // steps, -1), eta=eta, noise=z / 2, clip_x0=1.0)
        torch.testing.assert_close(ours, out.prev_sample, rtol=1e-9, atol=1e-9)
    assert clipped > 10   # the clipping branch was actually exercised


@pytest.mark.parametrize("T", [1000, 100, 13])
def test_trailing_timesteps_match_diffusers_for_every_step_count(T):
    """Every step count, rounding ties included: torch's float arange put 111 of T = 1000's step counts (48, 61,
    96, ...) one timestep off diffusers at an exact half; the library now rounds as diffusers does. For some step
    counts (T = 100, steps = 29) diffusers' float arange overshoots and appends a timestep -1 after its `steps`
    entries; the library keeps exactly `steps` (the extra entry is checked to be that -1 and nothing else)."""
    ref = _ddim_scheduler(T, "trailing")
    bad = []
    for steps in range(1, T + 1):
        ref.set_timesteps(steps)
        theirs = ref.timesteps.tolist()
        if dl.ddim_timesteps(T, steps, "trailing") != theirs[:steps] or theirs[steps:] not in ([], [-1]):
            bad.append(steps)
    assert not bad, f"T = {T}: step counts whose trailing timesteps differ from diffusers: {bad[:20]}"
