"""DDIM: timesteps, sigma_t(eta), the step against Eq. 12 of Song et al. 2021 by hand and
against DDPM at eta = 1, exact inversion for a constant-epsilon model, and bad input.
(Oracle checks are in test_lib_samplers.py, diffusers ones in test_lib_diffusers.py.)"""
import pytest
import torch

import diffusion_lab as dl

S = dl.linear_schedule(T=20, beta_start=0.01, beta_end=0.3)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _ab(t):
    # alpha_bar with the convention alpha_bar_{-1} = 1.
    return torch.tensor(1.0, dtype=torch.float64) if t < 0 else S.alpha_bars[t]


# ---------------------------------------------------------------------------------------
# timesteps
# ---------------------------------------------------------------------------------------
def test_ddim_timesteps_by_hand():
    assert dl.ddim_timesteps(1000, 10, "trailing") == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert dl.ddim_timesteps(1000, 10, "leading") == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    # trailing: round(10, 6.67, 3.33) - 1; leading: (0, 3, 6) reversed.
    assert dl.ddim_timesteps(10, 3, "trailing") == [9, 6, 2]
    assert dl.ddim_timesteps(10, 3, "leading") == [6, 3, 0]
    # steps not dividing T: leading uses r = T // steps = 2 (not 2.5, which would give 7, 5, 2, 0)
    assert dl.ddim_timesteps(10, 4, "leading") == [6, 4, 2, 0]
    assert dl.ddim_timesteps(7, 7, "trailing") == [6, 5, 4, 3, 2, 1, 0]
    assert dl.ddim_timesteps(7, 7, "leading") == [6, 5, 4, 3, 2, 1, 0]
    assert dl.ddim_timesteps(50, 1, "trailing") == [49]
    assert dl.ddim_timesteps(50, 1, "leading") == [0]
    assert dl.ddim_timesteps(1000, 50) == dl.ddim_timesteps(1000, 50, "trailing")


@pytest.mark.parametrize("spacing", ["trailing", "leading"])
@pytest.mark.parametrize("T, steps", [(1000, 50), (1000, 3), (1000, 999), (17, 5), (1, 1)])
def test_ddim_timesteps_are_strictly_decreasing_in_range(T, steps, spacing):
    ts = dl.ddim_timesteps(T, steps, spacing)
    assert len(ts) == steps and all(isinstance(t, int) for t in ts)
    assert all(0 <= t <= T - 1 for t in ts)
    assert all(a > b for a, b in zip(ts, ts[1:]))


# ---------------------------------------------------------------------------------------
# sigma and step
# ---------------------------------------------------------------------------------------
def test_ddim_sigma_eq16():
    like = torch.zeros(1, dtype=torch.float64)
    for t, tp in [(5, 4), (19, 10), (3, -1)]:
        ab, abp = _ab(t), _ab(tp)
        expected = 0.7 * ((1 - abp) / (1 - ab)).sqrt() * (1 - ab / abp).sqrt()
        torch.testing.assert_close(torch.as_tensor(dl.ddim_sigma(S, t, tp, 0.7, like)).reshape(()), expected)
    # eta = 1 and consecutive steps: sigma^2 is DDPM's posterior variance beta_tilde_t.
    for t in range(1, S.T):
        s = torch.as_tensor(dl.ddim_sigma(S, t, t - 1, 1.0, like)).reshape(())
        torch.testing.assert_close(s ** 2, S.posterior_variances[t])


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("t, t_prev", [(19, 14), (10, 9), (4, -1), (0, -1), (19, -1)])
def test_ddim_step_is_eq12(t, t_prev, eta):
    # x_prev = sqrt(ab_prev) (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)
    #        + sqrt(1 - ab_prev - sigma^2) eps + sigma z,
    # sigma = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev).
    g = _gen(t * 10 + t_prev + 1)
    xt, eps, z = (torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(3))
    ab, abp = _ab(t), _ab(t_prev)
    sigma = eta * ((1 - abp) / (1 - ab) * (1 - ab / abp)).sqrt()
    x0 = (xt - (1 - ab).sqrt() * eps) / ab.sqrt()
    expected = abp.sqrt() * x0 + (1 - abp - sigma ** 2).sqrt() * eps + sigma * z
    out = dl.ddim_step(S, xt, eps, t, t_prev, eta=eta, noise=z)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("t, t_prev, clip", [(19, 14, 1.0), (10, 9, 2.5), (4, -1, 1.0)])
def test_ddim_step_clip_x0_is_eq12_with_eps_rederived(t, t_prev, eta, clip):
    # x0_hat = clamp((x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t), -clip, clip), then eps is re-derived
    # from the clipped x0_hat, eps' = (x_t - sqrt(ab_t) x0_hat) / sqrt(1 - ab_t) (GLIDE; diffusers'
    # use_clipped_model_output=True), and Eq. 12 uses x0_hat and eps'. Keeping the raw eps, a
    # halved clip range or clamping x_t instead all fail: x0_raw has entries inside the range that
    # must pass unchanged and entries outside it.
    ab, abp = _ab(t), _ab(t_prev)
    x0_raw = torch.tensor([[0.8, -0.6, 3.0, -0.2], [-4.0, 0.45, 1.9, 0.95]], dtype=torch.float64) * clip
    eps = torch.randn(2, 4, generator=_gen(200 + t), dtype=torch.float64)
    z = torch.randn(2, 4, generator=_gen(300 + t), dtype=torch.float64)
    xt = ab.sqrt() * x0_raw + (1 - ab).sqrt() * eps
    x0 = torch.minimum(torch.maximum(x0_raw, torch.tensor(-clip)), torch.tensor(clip))
    eps_clipped = (xt - ab.sqrt() * x0) / (1 - ab).sqrt()
    sigma = eta * ((1 - abp) / (1 - ab) * (1 - ab / abp)).sqrt()
    expected = abp.sqrt() * x0 + (1 - abp - sigma ** 2).sqrt() * eps_clipped + sigma * z
    out = dl.ddim_step(S, xt, eps, t, t_prev, eta=eta, noise=z, clip_x0=clip)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, dl.ddim_step(S, xt, eps, t, t_prev, eta=eta, noise=z))   # clipping mattered


@pytest.mark.parametrize("t", [0, 1, 2, 10, 19])
def test_ddim_step_eta1_consecutive_equals_ddpm_step(t):
    g = _gen(100 + t)
    xt, eps, z = (torch.randn(5, 2, generator=g, dtype=torch.float64) for _ in range(3))
    ddpm, _ = dl.ddpm_step(S, xt, eps, t, z, variance="posterior")
    ddim = dl.ddim_step(S, xt, eps, t, t - 1, eta=1.0, noise=z)
    torch.testing.assert_close(ddim, ddpm)


def test_ddim_step_eta0_moves_along_the_forward_process_exactly():
    # If eps is the true noise in x_t = q_sample(x0, t, eps), the deterministic DDIM step to
    # any earlier t_prev lands on q_sample(x0, t_prev, eps): an index-sensitive identity.
    g = _gen(1)
    x0, eps = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(2))
    for t, tp in [(19, 0), (19, 18), (12, 5), (1, 0)]:
        xt = dl.q_sample(S, x0, t, eps)
        torch.testing.assert_close(dl.ddim_step(S, xt, eps, t, tp), dl.q_sample(S, x0, tp, eps))
        torch.testing.assert_close(dl.ddim_step(S, xt, eps, t, -1), x0)


def test_ddim_step_per_row_timesteps():
    g = _gen(2)
    xt, eps, z = (torch.randn(3, 2, generator=g, dtype=torch.float64) for _ in range(3))
    t, tp = torch.tensor([19, 7, 3]), torch.tensor([15, -1, 2])
    out = dl.ddim_step(S, xt, eps, t, tp, eta=0.5, noise=z)
    for i in range(3):
        row = dl.ddim_step(S, xt[i:i + 1], eps[i:i + 1], int(t[i]), int(tp[i]), eta=0.5, noise=z[i:i + 1])
        torch.testing.assert_close(out[i:i + 1], row)


def test_ddim_step_eta0_ignores_noise_and_float32_preserved():
    xt, eps = torch.randn(2, 3, generator=_gen(3)), torch.randn(2, 3, generator=_gen(4))
    a = dl.ddim_step(S, xt, eps, 10, 5)
    b = dl.ddim_step(S, xt, eps, 10, 5, eta=0.0, noise=torch.randn(2, 3, generator=_gen(5)))
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------
# sampler and inversion plumbing
# ---------------------------------------------------------------------------------------
def _toy_model(x, t, cond=None):
    return 0.3 * torch.tanh(x) + 0.01 * t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


@pytest.mark.parametrize("eta", [0.0, 0.8])
@pytest.mark.parametrize("spacing", ["trailing", "leading"])
def test_ddim_sample_replays_ddim_step_by_hand(eta, spacing):
    g = _gen(6)
    x = torch.randn(4, 2, generator=g)
    ts = dl.ddim_timesteps(S.T, 6, spacing)
    for i, t in enumerate(ts):
        tp = ts[i + 1] if i + 1 < len(ts) else -1
        eps = _toy_model(x, torch.full((4,), t))
        noise = torch.randn(4, 2, generator=g) if eta > 0 else None
        x = dl.ddim_step(S, x, eps, t, tp, eta=eta, noise=noise)
    out = dl.ddim_sample(_toy_model, S, (4, 2), steps=6, eta=eta, generator=_gen(6), spacing=spacing)
    torch.testing.assert_close(out, x)


def test_ddim_sample_callback_determinism_and_global_rng():
    calls = []
    state = torch.random.get_rng_state()
    x = dl.ddim_sample(_toy_model, S, (3, 1, 2, 2), steps=5, eta=0.5, generator=_gen(7), callback=calls.append)
    assert torch.equal(state, torch.random.get_rng_state())
    ts = dl.ddim_timesteps(S.T, 5)
    assert [c["t"] for c in calls] == ts and [c["i"] for c in calls] == list(range(5))
    assert [c["t_prev"] for c in calls] == ts[1:] + [-1]
    assert torch.equal(calls[-1]["x"], x)
    assert torch.equal(x, dl.ddim_sample(_toy_model, S, (3, 1, 2, 2), steps=5, eta=0.5, generator=_gen(7)))


def test_ddim_sample_eta0_is_deterministic_given_xT_and_steps_T_eta1_is_ddpm():
    xT = torch.randn(4, 2, generator=_gen(8))
    a = dl.ddim_sample(_toy_model, S, (4, 2), steps=7, xT=xT, generator=_gen(1))
    b = dl.ddim_sample(_toy_model, S, (4, 2), steps=7, xT=xT, generator=_gen(2))
    torch.testing.assert_close(a, b)
    # steps = T and eta = 1 is DDPM ancestral sampling with the posterior variance, draw for draw.
    ddim = dl.ddim_sample(_toy_model, S, (4, 2), steps=S.T, eta=1.0, generator=_gen(9))
    ddpm = dl.ddpm_sample(_toy_model, S, (4, 2), generator=_gen(9))
    torch.testing.assert_close(ddim, ddpm)


@pytest.mark.parametrize("steps", [1, 4, 20])
def test_ddim_invert_then_sample_is_exact_for_a_constant_epsilon_model(steps):
    # With eps(x, t) = e for all x and t, the DDIM trajectories are exactly
    # x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) e, so the inversion must land on
    # q_sample(x0, t_first, e) and decoding must return x0, whatever the number of steps.
    g = _gen(10)
    x0, e = (torch.randn(3, 2, generator=g, dtype=torch.float64) for _ in range(2))
    model = lambda x, t, cond=None: e.expand_as(x)  # noqa: E731
    xT = dl.ddim_invert(model, S, x0, steps=steps)
    first = dl.ddim_timesteps(S.T, steps)[0]
    torch.testing.assert_close(xT, dl.q_sample(S, x0, first, e))
    torch.testing.assert_close(dl.ddim_sample(model, S, x0.shape, steps=steps, xT=xT), x0)


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------
X = torch.zeros(2, 3)
NAN = torch.tensor([[0.0, float("nan"), 0.0], [0.0, 0.0, 0.0]])


@pytest.mark.parametrize("T, steps, name, exc", [(0, 1, "T", ValueError), (10, 11, "steps", ValueError),
                                                 (10, 0, "steps", ValueError), (10, 2.0, "steps", TypeError),
                                                 (10.0, 2, "T", TypeError)])
def test_ddim_timesteps_bad_input(T, steps, name, exc):
    with pytest.raises(exc, match=rf"^{name}\b"):
        dl.ddim_timesteps(T, steps)


def test_ddim_timesteps_bad_spacing():
    with pytest.raises(ValueError, match=r"^spacing\b"):
        dl.ddim_timesteps(10, 2, "linspace")


@pytest.mark.parametrize("t, t_prev, name", [(20, 5, "t"), (-1, -1, "t"), (5, 5, "t_prev"), (5, 7, "t_prev"),
                                             (5, -2, "t_prev"), (torch.tensor([5, 3]), torch.tensor([4, 3]), "t_prev")])
def test_ddim_step_bad_timesteps(t, t_prev, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        dl.ddim_step(S, X, X, t, t_prev)


def test_ddim_step_bad_input():
    with pytest.raises(ValueError, match=r"^eta\b"):
        dl.ddim_step(S, X, X, 5, 4, eta=-0.1)
    with pytest.raises(ValueError, match=r"^eta\b"):
        dl.ddim_step(S, X, X, 5, 4, eta=float("nan"))
    with pytest.raises(ValueError, match=r"^noise\b"):
        dl.ddim_step(S, X, X, 5, 4, eta=0.5)
    with pytest.raises(ValueError, match=r"^noise\b"):
        dl.ddim_step(S, X, X, 5, 4, eta=0.5, noise=NAN)
    with pytest.raises(ValueError, match=r"^eps\b"):
        dl.ddim_step(S, X, torch.zeros(3, 2), 5, 4)
    with pytest.raises(ValueError, match=r"^xt\b"):
        dl.ddim_step(S, NAN, X, 5, 4)
    with pytest.raises(TypeError, match=r"^schedule\b"):
        dl.ddim_step(None, X, X, 5, 4)
    with pytest.raises(TypeError, match=r"^t_prev\b"):
        dl.ddim_step(S, X, X, 5, 4.0)
    with pytest.raises(TypeError, match=r"^eta\b"):
        dl.ddim_step(S, X, X, 5, 4, eta="0")


def test_ddim_step_rejects_noise_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"^noise\b"):
        dl.ddim_step(S, X, X, 5, 4, eta=1.0, noise=torch.zeros(2, 1))


def test_ddim_sigma_bad_input():
    with pytest.raises(ValueError, match=r"^eta\b"):
        dl.ddim_sigma(S, 5, 4, -1.0, X)
    with pytest.raises(ValueError, match=r"^t\b"):
        dl.ddim_sigma(S, 20, 4, 0.5, X)


def test_ddim_sample_bad_input():
    with pytest.raises(ValueError, match=r"^steps\b"):
        dl.ddim_sample(_toy_model, S, (2, 3), steps=21)
    with pytest.raises(ValueError, match=r"^steps\b"):
        dl.ddim_sample(_toy_model, S, (2, 3), steps=0)
    with pytest.raises(ValueError, match=r"^eta\b"):
        dl.ddim_sample(_toy_model, S, (2, 3), steps=5, eta=-1.0)
    with pytest.raises(TypeError, match=r"^model\b"):
        dl.ddim_sample(3, S, (2, 3), steps=5)
    with pytest.raises(TypeError, match=r"^schedule\b"):
        dl.ddim_sample(_toy_model, None, (2, 3), steps=5)
    with pytest.raises(ValueError, match=r"^shape\b"):
        dl.ddim_sample(_toy_model, S, (0, 3), steps=5)
    with pytest.raises(ValueError, match=r"^xT\b"):
        dl.ddim_sample(_toy_model, S, (2, 3), steps=5, xT=torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"^cond\b"):
        dl.ddim_sample(_toy_model, S, (2, 3), steps=5, cond=torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match=r"^spacing\b"):
        dl.ddim_sample(_toy_model, S, (2, 3), steps=5, spacing="uniform")
    with pytest.raises(ValueError, match=r"^model\b"):
        dl.ddim_sample(lambda x, t, cond=None: x.sum(1), S, (2, 3), steps=5)
    with pytest.raises(TypeError, match=r"^generator\b"):
        dl.ddim_sample(_toy_model, S, (2, 3), steps=5, eta=1.0, generator=1)


def test_ddim_sample_rejects_a_non_callable_callback():
    with pytest.raises(TypeError, match=r"^callback\b"):
        dl.ddim_sample(_toy_model, S, (2, 3), steps=5, callback="print")


def test_ddim_invert_bad_input():
    with pytest.raises(ValueError, match=r"^steps\b"):
        dl.ddim_invert(_toy_model, S, X, steps=21)
    with pytest.raises(ValueError, match=r"^x0\b"):
        dl.ddim_invert(_toy_model, S, NAN, steps=5)
    with pytest.raises(TypeError, match=r"^model\b"):
        dl.ddim_invert(None, S, X, steps=5)
    with pytest.raises(TypeError, match=r"^schedule\b"):
        dl.ddim_invert(_toy_model, "cosine", X, steps=5)
    with pytest.raises(ValueError, match=r"^cond\b"):
        dl.ddim_invert(_toy_model, S, X, steps=5, cond=torch.tensor([1, 2, 3]))


def test_ddim_sample_and_invert_are_silent_unless_progress_is_asked_for(capsys):
    # STYLE: long loops show a tqdm bar that callers can switch off; nothing else prints.
    x = dl.ddim_sample(_toy_model, S, (2, 2), steps=5, generator=_gen(30))
    dl.ddim_invert(_toy_model, S, x, steps=5)
    assert capsys.readouterr() == ("", "")
    dl.ddim_sample(_toy_model, S, (2, 2), steps=5, generator=_gen(30), progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "DDIM: 100%" in err and "5/5" in err
    dl.ddim_invert(_toy_model, S, x, steps=5, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "DDIM inversion: 100%" in err and "5/5" in err


@pytest.mark.parametrize("spacing", ["trailing", "leading"])
def test_ddim_invert_spacing_cond_and_dtype(spacing):
    # The constant-eps model's exact trajectory for either spacing; cond reaches the model; a
    # float32 input stays float32 (the float64 coefficients are cast to the data's dtype).
    g = _gen(60)
    x0, e = (torch.randn(3, 2, generator=g) for _ in range(2))
    seen = []

    def model(x, t, cond=None):
        seen.append(cond)
        return e.expand_as(x)
    cond = torch.tensor([1, 0, 2])
    xT = dl.ddim_invert(model, S, x0, steps=4, cond=cond, spacing=spacing)
    first = dl.ddim_timesteps(S.T, 4, spacing)[0]
    assert xT.dtype == torch.float32
    ab = S.alpha_bars[first]
    torch.testing.assert_close(xT, (ab.sqrt() * x0.double() + (1 - ab).sqrt() * e.double()).float())
    assert len(seen) == 4 and all(c is cond for c in seen)


def test_ddim_sigma_keeps_the_dtype_of_like():
    like = torch.zeros(2, 3)
    s = dl.ddim_sigma(S, 10, 5, 0.5, like)
    assert s.dtype == torch.float32
    with pytest.raises(ValueError, match=r"^like must be finite"):
        dl.ddim_sigma(S, 10, 5, 0.5, torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match=r"^eta must be in \[0, inf\], got -1.0$"):
        dl.ddim_sigma(S, 10, 5, -1.0, like)


# ---------------------------------------------------------------------------------------
# found by mutation testing (CONTRIBUTING.md, "Mutation testing")
# ---------------------------------------------------------------------------------------
def test_ddim_sigma_per_row_timesteps_broadcast_against_like():
    # Per-row t gives sigma of shape (B, 1, ...) with each row's Eq. 16 value; a t of the wrong length is named.
    like = torch.zeros(3, 2, 2, dtype=torch.float64)
    t, tp = torch.tensor([19, 7, 3]), torch.tensor([15, -1, 2])
    s = dl.ddim_sigma(S, t, tp, 0.6, like)
    assert s.shape == (3, 1, 1)
    for i in range(3):
        ab, abp = _ab(int(t[i])), _ab(int(tp[i]))
        torch.testing.assert_close(s[i, 0, 0], 0.6 * ((1 - abp) / (1 - ab) * (1 - ab / abp)).sqrt())
    with pytest.raises(ValueError, match=r"^t has 3 entries but the batch has 2$"):
        dl.ddim_sigma(S, t, tp, 0.6, torch.zeros(2, 4))


def test_ddim_step_timestep_messages_are_exact():
    # int t_prev out of [-1, T - 2] is caught by its own range check (not by a later one with another text);
    # a tensor t_prev below -1 would index alpha_bar from the end (a silently wrong step): it is refused.
    with pytest.raises(ValueError, match=r"^t_prev must be an integer in \[-1, 18\], got -2$"):
        dl.ddim_step(S, X, X, 5, -2)
    with pytest.raises(ValueError, match=r"^t_prev must be an integer in \[-1, 18\], got 19$"):
        dl.ddim_step(S, X, X, 19, 19)
    with pytest.raises(ValueError, match=r"^t_prev must be >= -1 \(-1 means the clean data x_0\), got -2$"):
        dl.ddim_step(S, X, X, torch.tensor([5, 4]), torch.tensor([-2, 3]))
    with pytest.raises(TypeError, match=r"^t_prev must hold integer timesteps, got dtype torch.float32$"):
        dl.ddim_step(S, X, X, 5, torch.tensor([4.0, 3.0]))
    # either t or t_prev of the wrong length is refused with the batch size named
    for t, tp in [(torch.tensor([5, 4, 3]), 2), (5, torch.tensor([4, 3, 2]))]:
        with pytest.raises(ValueError, match=r"^t and t_prev must be ints or have shape \(2,\)$"):
            dl.ddim_step(S, X, X, t, tp)
    with pytest.raises(ValueError, match=r"^eps must be finite"):
        dl.ddim_step(S, X, NAN, 5, 4)


def test_ddim_step_eta0_never_uses_noise():
    # At eta = 0 the noise term is absent, not multiplied by sigma = 0: an inf noise would give NaN.
    xt, eps = torch.randn(2, 3, generator=_gen(40)), torch.randn(2, 3, generator=_gen(41))
    out = dl.ddim_step(S, xt, eps, 10, 5, eta=0.0, noise=torch.full((2, 3), float("inf")))
    torch.testing.assert_close(out, dl.ddim_step(S, xt, eps, 10, 5))


def test_ddim_sample_and_invert_default_to_50_steps():
    s = dl.linear_schedule(T=100)
    calls = []
    dl.ddim_sample(_toy_model, s, (2, 1), generator=_gen(42), callback=calls.append)
    assert len(calls) == 50 and calls[0]["t"] == 99
    ts = []
    dl.ddim_invert(lambda x, t, cond=None: ts.append(int(t[0])) or torch.zeros_like(x), s, torch.zeros(2, 1))
    assert ts == dl.ddim_timesteps(100, 50)[::-1]


def test_ddim_sample_clip_x0_replays_the_clipped_step_and_is_checked():
    g = _gen(43)
    x = torch.randn(4, 2, generator=g) * 3
    ts = dl.ddim_timesteps(S.T, 5)
    for i, t in enumerate(ts):
        tp = ts[i + 1] if i + 1 < len(ts) else -1
        x = dl.ddim_step(S, x, _toy_model(x, torch.full((4,), t)), t, tp, clip_x0=0.5)
    out = dl.ddim_sample(_toy_model, S, (4, 2), steps=5, generator=_gen(0), xT=torch.randn(4, 2, generator=_gen(43)) * 3,
                         clip_x0=0.5)
    torch.testing.assert_close(out, x)
    assert not torch.allclose(out, dl.ddim_sample(_toy_model, S, (4, 2), steps=5, xT=torch.randn(4, 2, generator=_gen(43)) * 3))
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match=rf"^clip_x0 must be in \(0, inf\], got {float(bad)}$"):
            dl.ddim_sample(_toy_model, S, (2, 3), steps=5, clip_x0=bad)
    with pytest.raises(TypeError, match=r"^clip_x0 must be a real number"):
        dl.ddim_sample(_toy_model, S, (2, 3), steps=5, clip_x0="1")
    # the generator is checked even when no noise is drawn (eta = 0 and xT given)
    with pytest.raises(TypeError, match=r"^generator\b"):
        dl.ddim_sample(_toy_model, S, (2, 3), steps=5, xT=torch.zeros(2, 3), generator=1)


def test_ddim_invert_names_the_step_of_a_broken_model():
    def model(x, t, cond=None):
        return torch.full_like(x, float("nan")) if int(t[0]) == 7 else torch.zeros_like(x)
    ts = dl.ddim_timesteps(S.T, 10, "trailing")[::-1]       # increasing: 1, 3, 5, 7, ...
    i = ts.index(7)
    with pytest.raises(ValueError, match=rf"^model output at step {i} \(t = 7\) is not finite"):
        dl.ddim_invert(model, S, X, steps=10)


def test_ddim_sample_checks_xT_by_name_and_reports_x0_hat():
    with pytest.raises(ValueError, match=r"^xT must be finite"):
        dl.ddim_sample(_toy_model, S, (2, 3), steps=5, xT=NAN)
    # the last step goes to t_prev = -1, where sigma = 0 and sqrt(1 - ab_prev - sigma^2) = 0: x_0 = x0_hat
    calls = []
    x = dl.ddim_sample(_toy_model, S, (3, 2), steps=4, eta=0.5, generator=_gen(44), callback=calls.append)
    torch.testing.assert_close(calls[-1]["x0_hat"], x)
    assert not torch.allclose(calls[0]["x0_hat"], calls[0]["x"])


def test_ddim_sample_float64_replay_and_eta0_draws_only_xT():
    # Noise drawn in the data's dtype: a float64 run replays ddim_step with float64 draws (float32 draws
    # would agree only to float32 rounding). At eta = 0 nothing is drawn after x_T: the generator is left
    # exactly where one draw of x_T leaves it.
    xT = torch.randn(4, 2, generator=_gen(45), dtype=torch.float64)
    g, x = _gen(46), xT
    ts = dl.ddim_timesteps(S.T, 5)
    for i, t in enumerate(ts):
        tp = ts[i + 1] if i + 1 < len(ts) else -1
        noise = torch.randn(4, 2, generator=g, dtype=torch.float64)
        x = dl.ddim_step(S, x, _toy_model(x, torch.full((4,), t)), t, tp, eta=0.7, noise=noise)
    out = dl.ddim_sample(_toy_model, S, (4, 2), steps=5, eta=0.7, xT=xT, generator=_gen(46))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-12)
    g = _gen(47)
    dl.ddim_sample(_toy_model, S, (4, 2), steps=5, generator=g)
    ref = _gen(47)
    torch.randn(4, 2, generator=ref)
    assert torch.equal(g.get_state(), ref.get_state())
    with pytest.raises(ValueError, match=r"^model output at step 1 \(t = 15\) is not finite"):
        dl.ddim_sample(lambda x, t, cond=None: x * float("nan") if int(t[0]) == 15 else x, S, (2, 2), steps=5)
