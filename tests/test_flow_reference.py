"""Reference check for flow sampling: diffusers' FlowMatchEulerDiscreteScheduler (SD3's sampler, test-only
dependency) stepping the same velocity model gives the same samples as ode_sample(..., method="euler")."""
import pytest
import torch

import diffusion_lab as dl

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def model():
    x, _ = dl.make_toy("moons", 2000, torch.Generator().manual_seed(0))
    return dl.train_flow(x, steps=150, batch_size=256, progress=False, net={"hidden": 32, "depth": 2})[0]


@pytest.mark.parametrize("steps", [1, 4, 20])
def test_flow_match_euler_scheduler_matches_ode_sample(model, steps):
    """Grid: ode_sample's linear-path grid t_i = 1 - i / steps, i = 0..steps (time_grid(linear_path(), steps)); diffusers
    gets the same values as its sigmas (shift 1, set_timesteps(sigmas=t_0..t_{steps-1}), then it appends sigma = 0),
    and calls the transformer with timestep = 1000 sigma, so the wrapper below passes t = timestep / 1000.
    Sign convention: both take the model output as the velocity d x_t / dt = noise - x0 on x_t = (1 - t) x0 + t noise
    (diffusers' step: x <- x + (sigma_next - sigma) v). Same start x_T, float32: max difference < 1e-5 (measured 0, 2.4e-7
    and 4.2e-7 at 1, 4, 20 steps: float32 sigmas against float64 ones). A flipped velocity sign differs by ~6, and
    diffusers' default grid (set_timesteps(steps): sigmas from 1 to 1/1000, not to 0) by 0.34 at 4 steps, 0.04 at 20."""
    x_T = torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    ours = dl.ode_sample(model, dl.linear_path(), (500, 2), steps=steps, method="euler", prediction="velocity", x_T=x_T)

    sched = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    grid = dl.ode.time_grid(dl.linear_path(), steps)
    sched.set_timesteps(sigmas=grid[:-1])
    assert sched.sigmas[-1] == 0 and len(sched.timesteps) == steps
    sample = x_T.clone()
    with torch.no_grad():
        for timestep in sched.timesteps:
            v = model(sample, (timestep / 1000).expand(sample.shape[0]).to(sample.dtype))
            sample = sched.step(v, timestep, sample).prev_sample
    assert float((sample - ours).abs().max()) < 1e-5
