"""Masked diffusion (masked.py) with the exact denoiser of a known distribution over the 64 sequences of
length 3 on 4 symbols: the loss at fixed t against enumeration, the NLL against the entropy and the gap
shrinking with the number of steps, the sampler reproducing the distribution (total variation with a stated
bound), a short training run that learns the correlations, the shipped digits checkpoint, and bad input."""
import math
import re

import pytest
import torch

import diffusion_lab as dl

K, L = 4, 3
STATES = torch.cartesian_prod(*[torch.arange(K)] * L)                  # (64, 3)
CODE = torch.tensor([K * K, K, 1])


def _toy():
    g = torch.Generator().manual_seed(0)
    logit = 2.0 * ((STATES[:, 0] == STATES[:, 1]).double() + (STATES[:, 1] == STATES[:, 2]).double())
    return torch.softmax(logit + 0.5 * torch.randn(64, generator=g, dtype=torch.float64), 0)


P = _toy()
H = float(-(P * P.log2()).sum()) / L                                    # bits per token
MARGINALS = [P.reshape(K, K, K).sum(dims) for dims in ((1, 2), (0, 2), (0, 1))]
PRODUCT = (MARGINALS[0][:, None, None] * MARGINALS[1][None, :, None] * MARGINALS[2][None, None, :]).reshape(-1)
H_PRODUCT = float(-(PRODUCT * PRODUCT.log2()).sum()) / L                # independent tokens: sum of H(x_i)


def _draw(n, seed):
    return STATES[torch.multinomial(P, n, True, generator=torch.Generator().manual_seed(seed))]


def _tv(x):
    freq = torch.bincount((x * CODE).sum(1), minlength=64).double() / len(x)
    return 0.5 * float((freq - P).abs().sum()), 0.5 * float((freq - PRODUCT).abs().sum())


def test_loss_at_fixed_t_equals_the_enumerated_expectation():
    oracle = dl.MaskedOracle(P.reshape(K, K, K))
    masks = torch.cartesian_prod(*[torch.tensor([False, True])] * L)
    x0 = STATES.repeat_interleave(8, 0)
    M = masks.repeat(64, 1)
    logp = torch.log_softmax(oracle(torch.where(M, K, x0)).double(), -1)
    ce = -(logp.gather(-1, x0[..., None]).squeeze(-1) * M).sum(1)       # masked cross-entropy, each (x_0, M)
    n = 20000
    for t in (0.3, 0.9):
        m = M.sum(1).double()
        exact = float((P.repeat_interleave(8) * t ** m * (1 - t) ** (L - m) * ce).sum()) / (t * L)
        x = _draw(n, 1)
        per = [float(dl.masked_diffusion_loss(oracle, x[i:i + 1000], generator=torch.Generator().manual_seed(i),
                                              t=torch.full((1000,), t, dtype=torch.float64))) for i in range(0, n, 1000)]
        mean, se = sum(per) / len(per), float(torch.tensor(per).std()) / math.sqrt(len(per))
        # a loss without the 1/t weight would be off by a factor t (0.3: 3x), one over all tokens by far more
        assert abs(mean - exact) < 4.5 * se, (t, mean, exact, se)


def test_nll_bounds_the_entropy_and_the_gap_shrinks_with_steps():
    oracle = dl.MaskedOracle(P.reshape(K, K, K))
    x = _draw(20000, 3)
    means, ses = {}, {}
    for steps in (1, 4, 16, None):
        nll = dl.masked_diffusion_nll(oracle, x, steps=steps, generator=torch.Generator().manual_seed(4))
        assert nll.shape == (20000,) and nll.dtype == torch.float64
        means[steps], ses[steps] = float(nll.mean()), float(nll.std()) / math.sqrt(len(nll))
    # continuous time with the exact denoiser: the bound is tight, E[NLL] = entropy
    assert abs(means[None] - H) < 4.5 * ses[None], (means[None], H)
    # one step reveals all tokens at once, independently: the bound is the cross-entropy to the product of
    # the marginals, sum_i H(x_i)
    assert abs(means[1] - H_PRODUCT) < 4.5 * ses[1], (means[1], H_PRODUCT)
    # the gap to the entropy shrinks as the number of steps grows (gaps ~0.37, ~0.09, ~0.02 bits per token)
    gaps = [means[s] - H for s in (1, 4, 16)]
    # (differences of independent means, 4.5 standard errors of the difference)
    assert gaps[0] - gaps[1] > 4.5 * math.hypot(ses[1], ses[4]), gaps
    assert gaps[1] - gaps[2] > 4.5 * math.hypot(ses[4], ses[16]), gaps


def test_nll_draws_t_given_the_number_masked_from_its_exact_law():
    # Continuous time: m masked of L at time t has weight (1/t) t^m (1 - t)^(L-m), so t | m ~ Beta(m, L - m + 1).
    # A spy model records (m, t); a uniform t (a plausible slip) fails the KS test by far (p < 1e-100).
    from scipy import stats
    seen = []
    oracle = dl.MaskedOracle(P.reshape(K, K, K))

    def spy(xt, t, cond=None):
        seen.append(((xt == K).sum(1), t.double()))
        return oracle(xt)
    x = _draw(6000, 11)
    dl.masked_diffusion_nll(spy, x, generator=torch.Generator().manual_seed(12), K=K)
    m, t = seen[0]
    for k in range(1, L + 1):
        assert stats.kstest(t[m == k].numpy(), stats.beta(k, L - k + 1).cdf).pvalue > 1e-4, k
    assert int((m == 0).sum()) == 0 and abs(float((m == 1).double().mean()) - 1 / 3) < 0.03   # m ~ U{1..L}
    # T steps: t = s/T with P(s | m) proportional to (1/s) (s/T)^m (1 - s/T)^(L-m)
    seen.clear()
    T = 4
    dl.masked_diffusion_nll(spy, x, steps=T, generator=torch.Generator().manual_seed(13), K=K)
    m, t = seen[0]
    s = torch.arange(1, T + 1, dtype=torch.float64)
    for k in range(1, L + 1):
        w = (s / T) ** k * (1 - s / T) ** (L - k) / s
        want = w / w.sum()
        got = torch.stack([((t[m == k] - v / T).abs() < 1e-6).double().mean() for v in s])
        n = int((m == k).sum())
        assert bool(((got - want).abs() <= 4.5 * (want * (1 - want) / n).sqrt() + 1e-12).all()), (k, got, want)


def test_sampler_reproduces_the_distribution():
    exact = dl.MaskedOracle(P.reshape(K, K, K))

    def oracle(xt, t, cond=None):       # logits 0 at visible positions: the sampler must keep those tokens
        return torch.where((xt == K)[..., None], exact(xt), 0.0)
    n, steps = 10000, 32
    seen = []
    x = dl.masked_diffusion_sample(oracle, (n, L), steps=steps, K=K, generator=torch.Generator().manual_seed(5),
                                   callback=lambda d: seen.append(int((d["x"] == K).sum())))
    assert x.dtype == torch.long and x.shape == (n, L) and int(x.max()) < K
    assert len(seen) == steps and seen[-1] == 0 and seen == sorted(seen, reverse=True)   # masks only ever go
    # TV(samples, p) <= TV(p_sampler, p) + TV(samples, p_sampler). Pinsker with KL(p || p_sampler) <= the
    # 32-step bound's gap (0.0111 bits per token, test_categorical): sqrt(3 * 0.0111 * ln 2 / 2) = 0.107;
    # sampling: E[TV] <= 0.5 sqrt(64 / n) = 0.040, plus McDiarmid sqrt(ln(1e4) / (2 n)) = 0.021 (prob. 1e-4).
    bound = math.sqrt(3 * 0.0112 * math.log(2) / 2) + 0.5 * math.sqrt(64 / n) + math.sqrt(math.log(1e4) / (2 * n))
    tv, tv_product = _tv(x)
    assert tv < bound, (tv, bound)
    assert 0.5 * float((PRODUCT - P).abs().sum()) > 0.45                # what a sampler ignoring context gives
    # one step reveals every token at once from its marginal: samples of the product of the marginals
    x1 = dl.masked_diffusion_sample(oracle, (n, L), steps=1, K=K, generator=torch.Generator().manual_seed(6))
    tv1, tv1_product = _tv(x1)
    assert tv1_product < 0.5 * math.sqrt(64 / n) + math.sqrt(math.log(1e4) / (2 * n)) and tv1 > 0.4, (tv1, tv1_product)


def test_cfg_on_logits_and_training_learns_the_correlations():
    # 2 classes: sequences from p and from its mirror image; a short run of the shared training loop
    x = _draw(3000, 7)
    y = torch.randint(0, 2, (3000,), generator=torch.Generator().manual_seed(8))
    x = torch.where(y[:, None] == 1, x.flip(1), x)
    model, losses = dl.train_masked_diffusion(x, y, steps=200, batch_size=128, lr=3e-3, progress=False,
                                              net={"hidden": 64, "depth": 2, "emb_dim": 32, "token_dim": 8})
    assert model.config["K"] == K and len(losses) == 200
    test = _draw(4000, 9)
    nll = dl.masked_diffusion_nll(model, test, cond=torch.zeros(4000, dtype=torch.long),
                                  generator=torch.Generator().manual_seed(10))
    se = float(nll.std()) / math.sqrt(len(nll))
    # learned the dependencies: well below independent tokens (1.96 bits), near the entropy (1.58; measured 1.63)
    assert float(nll.mean()) < H_PRODUCT - 0.2 and float(nll.mean()) > H - 4.5 * se, (float(nll.mean()), H, H_PRODUCT)
    guided = dl.cfg(model, 2.0)
    cond = torch.zeros(5, dtype=torch.long)
    xt = torch.full((5, L), K)
    t = torch.ones(5)
    torch.testing.assert_close(guided(xt, t, cond), 2 * model(xt, t, cond) - model(xt, t, None))
    s = dl.masked_diffusion_sample(guided, (5, L), steps=3, cond=cond, generator=torch.Generator().manual_seed(1), K=K)
    assert s.shape == (5, L)


def test_digits_checkpoint_samples_are_recognised_and_beat_the_per_pixel_baseline():
    model, meta = dl.load_pretrained("digits_masked")
    judge, _ = dl.load_pretrained("digits_judge")
    labels = torch.arange(10).repeat(10)
    x = dl.masked_diffusion_sample(dl.cfg(model, meta["cfg_scale"]), (100, 64), steps=meta["sample_steps"],
                                   cond=labels, K=17, generator=torch.Generator().manual_seed(3))
    acc = dl.classifier_accuracy(judge, x.reshape(-1, 1, 8, 8) / 8.0 - 1.0, labels)
    assert acc >= 0.9, acc                                  # the checkpoint's meta records 1.0 (a different draw)
    tokens, y = dl.load_digit_tokens()
    held = tokens[meta["n_train"]:]
    nll = dl.masked_diffusion_nll(model, held.repeat(4, 1), cond=y[meta["n_train"]:].repeat(4),
                                  generator=torch.Generator().manual_seed(4))
    counts = torch.nn.functional.one_hot(tokens[:meta["n_train"]], 17).sum(0).double() + 1   # add-one smoothing
    baseline = -(torch.log2(counts / counts.sum(1, keepdim=True)).gather(1, held.T).T).mean()   # 2.37 bits
    # measured: 2.02 bits per token (meta: 2.024 with 8 draws per digit) against the baseline's 2.37
    assert float(nll.mean()) < float(baseline) - 0.25, (float(nll.mean()), float(baseline))


def test_bad_input():
    oracle = dl.MaskedOracle(P.reshape(K, K, K))
    x = _draw(4, 0)
    with pytest.raises(ValueError, match=r"x0 must hold categories in \[0, 3\], got values from 4 to 4"):
        dl.masked_diffusion_loss(oracle, torch.full((2, 3), 4))
    with pytest.raises(TypeError, match="x0 must hold integer tokens"):
        dl.masked_diffusion_nll(oracle, x.float())
    for steps in (0, -3):
        with pytest.raises(ValueError, match=r"steps must be an integer in \[1, inf\]"):
            dl.masked_diffusion_sample(oracle, (2, 3), steps=steps)
        with pytest.raises(ValueError, match=r"steps must be an integer in \[1, inf\]"):
            dl.masked_diffusion_nll(oracle, x, steps=steps)

    def wrong_shape(xt, t, cond=None):
        return torch.zeros(*xt.shape, K + 1)

    def nan(xt, t, cond=None):
        return torch.full((*xt.shape, K), float("nan"))
    with pytest.raises(ValueError, match=r"model must return logits of shape \(4, 3, 4\)"):
        dl.masked_diffusion_loss(wrong_shape, x, K=K)
    with pytest.raises(ValueError, match="non-finite logits"):
        dl.masked_diffusion_nll(nan, x, K=K)
    with pytest.raises(ValueError, match="non-finite logits"):
        dl.masked_diffusion_sample(nan, (2, 3), steps=2, K=K)
    with pytest.raises(ValueError, match="K .* is required for a model without config"):
        dl.masked_diffusion_loss(nan, x)
    with pytest.raises(ValueError, match=r"t must have shape \(4,\) with values in \(0, 1\]"):
        dl.masked_diffusion_loss(oracle, x, t=torch.zeros(4))
    with pytest.raises(ValueError, match="cond must be None or an integer tensor"):
        dl.masked_diffusion_nll(oracle, x, cond=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="probs must be a probability table"):
        dl.MaskedOracle(torch.ones(4, 4) / 4)
    with pytest.raises(ValueError, match="tokens must hold categories"):
        dl.train_masked_diffusion(torch.tensor([[0, 5]]), K=3, steps=1)


def test_sampler_keeps_float64_off_the_device_and_does_not_sync_per_step():
    # the simulated accelerator of tests/test_device_discipline.py: float64 on the device, or a device-to-host
    # sync per step (a NaN check read every step), fails it
    from test_device_discipline import FAKE, _check, _seeded

    def run(steps):
        net = _seeded(lambda: dl.TokenMLP((6,), K=K, hidden=16, depth=1, emb_dim=8, token_dim=4).eval())
        return lambda: dl.masked_diffusion_sample(net.to(FAKE), (4, 6), steps=steps,
                                                  generator=torch.Generator().manual_seed(0))
    _check("masked_diffusion_sample", run(4), run(8))


def test_trainer_keeps_float64_off_the_device_and_does_not_sync_per_step():
    from test_device_discipline import FAKE, _check

    def run(steps):
        x, y = _draw(200, 12), torch.randint(0, 2, (200,), generator=torch.Generator().manual_seed(13))
        return lambda: dl.train_masked_diffusion(x, y, steps=steps, device=FAKE, batch_size=32, progress=False,
                                                 warmup=2, net=dict(hidden=16, depth=1, emb_dim=8, token_dim=4))[1]
    losses, _ = _check("train_masked_diffusion", run(3), run(9))
    assert len(losses) == 9 and all(isinstance(v, float) and math.isfinite(v) for v in losses)


class _TableLogits:
    """A spy model: logits W[x_t] + position term (float32), recording every (x_t, t, cond) it is given."""

    def __init__(self):
        g = torch.Generator().manual_seed(21)
        self.W = torch.randn(K + 1, K, generator=g)
        self.P = torch.randn(L, K, generator=g)
        self.calls = []

    def __call__(self, xt, t, cond=None):
        self.calls.append((xt.clone(), t.clone(), cond))
        return self.W[xt] + self.P


def _loss_by_hand(spy, x0, seed, t=None):
    """MDLM's loss with low-discrepancy times, written out in float64: u ~ U[0, 1) and the masks drawn from the
    generator in float64, t_b = 1 - frac(u + b/B), token i of row b masked when U_bi < t_b; the loss is the batch
    mean of (1/t_b) sum over masked tokens of -log softmax(logits)[x_0], per token. Also returns x_t and t."""
    g = torch.Generator().manual_seed(seed)
    B = x0.shape[0]
    if t is None:
        u = float(torch.rand((), generator=g, dtype=torch.float64))
        t = torch.tensor([1 - math.fmod(u + b / B, 1.0) for b in range(B)], dtype=torch.float64)
    U = torch.rand(x0.shape, generator=g, dtype=torch.float64)
    mask = U < t.double()[:, None]
    xt = torch.where(mask, K, x0)
    logp = torch.log_softmax((spy.W[xt] + spy.P).double(), -1).gather(-1, x0[..., None]).squeeze(-1)
    per_row = -(logp * mask).sum(1) / t.float().double()
    return float(per_row.mean()) / L, xt, t


def test_loss_replayed_by_hand_with_low_discrepancy_times_cond_and_generator():
    # kills: u, the strata b/B, frac, the masks drawn otherwise (dtype, generator), cond or the generator not
    # passed on, L read from x0[1] (a batch of one)
    cond = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 0])
    for B, seed in ((16, 31), (1, 32)):
        x0, spy = _draw(B, seed), _TableLogits()
        want, xt, t = _loss_by_hand(spy, x0, seed)
        got = dl.masked_diffusion_loss(spy, x0, cond[:B], torch.Generator().manual_seed(seed), K=K)
        assert len(spy.calls) == 1
        seen_xt, seen_t, seen_cond = spy.calls[0]
        assert torch.equal(seen_xt, xt) and seen_cond is not None and torch.equal(seen_cond, cond[:B])
        assert seen_t.dtype == torch.float32 and torch.equal(seen_t, t.float()), (seen_t, t)
        assert abs(float(got) - want) < 1e-6 * abs(want), (float(got), want)
        if B == 16:         # the strata: B times evenly spaced by 1/B in (0, 1]
            gaps = t.sort().values.diff()
            assert torch.allclose(gaps, torch.full((15,), 1 / 16, dtype=torch.float64)) and 0 < t.min() and t.max() <= 1
    # fixed times, t = 1 allowed (every token masked)
    x0, spy = _draw(4, 33), _TableLogits()
    t = torch.tensor([1.0, 0.25, 0.5, 1.0])
    want, xt, _ = _loss_by_hand(spy, x0, 34, t)
    got = dl.masked_diffusion_loss(spy, x0, generator=torch.Generator().manual_seed(34), K=K, t=t)
    assert torch.equal(spy.calls[0][0], xt) and bool((xt[[0, 3]] == K).all())
    assert abs(float(got) - want) < 1e-6 * abs(want), (float(got), want)


def test_loss_bad_input_messages_found_by_mutation():
    oracle = dl.MaskedOracle(P.reshape(K, K, K))
    x = _draw(4, 0)

    def nan(xt, t, cond=None):
        return torch.full((*xt.shape, K), float("nan"))
    msg = r"model returned non-finite logits (NaN or inf) at t in [0.3, 0.3]: the model is broken or diverged"
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        dl.masked_diffusion_loss(nan, x, K=K, t=torch.full((4,), 0.3))
    with pytest.raises(ValueError, match=re.escape("cond must be None or an integer tensor of labels with shape (4,), got (3,)")):
        dl.masked_diffusion_loss(oracle, x, cond=torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="^generator must be a torch.Generator or None, got int$"):
        dl.masked_diffusion_loss(oracle, x, generator=0)
    with pytest.raises(TypeError, match="^t must be a torch.Tensor, got list$"):
        dl.masked_diffusion_loss(oracle, x, t=[0.5] * 4)
    for bad in (1.5, 1.0 + 1e-6):
        with pytest.raises(ValueError, match=re.escape("t must have shape (4,) with values in (0, 1], got shape (4,)")):
            dl.masked_diffusion_loss(oracle, x, t=torch.tensor([0.5, 0.5, bad, 0.5], dtype=torch.float64))


def test_oracle_logits_are_the_enumerated_log_posterior():
    # x_t = (mask, 2, mask): p(x_0^0 = a | x_t) = sum_c p(a, 2, c) / sum_{a, c} p(a, 2, c), written out
    oracle = dl.MaskedOracle(P.reshape(K, K, K))
    out = oracle(torch.tensor([[K, 2, K], [K, K, K]]))
    table = P.reshape(K, K, K)
    want0 = table[:, 2, :].sum(1) / table[:, 2, :].sum()
    want2 = table[:, 2, :].sum(0) / table[:, 2, :].sum()
    torch.testing.assert_close(out[0, 0].double().exp(), want0, rtol=1e-6, atol=0)
    torch.testing.assert_close(out[0, 2].double().exp(), want2, rtol=1e-6, atol=0)
    torch.testing.assert_close(out[0, 1].double().exp(), torch.eye(K, dtype=torch.float64)[2], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[1].double().exp(), torch.stack(MARGINALS), rtol=1e-6, atol=0)


def test_trainer_options_labels_callback_progress_and_messages_found_by_mutation(capsys):
    x = _draw(64, 41)
    net = dict(hidden=8, depth=1, emb_dim=4, token_dim=2)
    # a TrainConfig given positionally is used; net options reach TokenMLP; num_classes = labels.max() + 1
    steps = []
    state = torch.get_rng_state()
    model, losses = dl.train_masked_diffusion(x, torch.ones(64, dtype=torch.long),
                                              dl.TrainConfig(steps=3, batch_size=8, warmup=1, net=net, progress=True),
                                              callback=lambda d: steps.append((d["step"], d["loss"])))
    assert torch.equal(torch.get_rng_state(), state)      # every draw from the seeded generator, none global
    assert len(losses) == 3 and [s for s, _ in steps] == [0, 1, 2] and [v for _, v in steps] == losses
    assert "train_masked_diffusion: 100%" in capsys.readouterr().err
    assert model.config["num_classes"] == 2 and model.config["hidden"] == 8 and model.config["K"] == K
    # the labels reach the model: a spy sees label 1 (p_uncond = 0) or the null label 2 (p_uncond = 1)
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(K))

        def forward(self, xt, t, cond=None):
            seen.append(cond)
            return self.w.expand(*xt.shape, K)
    for p_uncond, label in ((0.0, 1), (1.0, 2)):
        seen.clear()
        dl.train_masked_diffusion(x, torch.ones(64, dtype=torch.long), model=Spy(), steps=2, batch_size=8,
                                  p_uncond=p_uncond, ema_decay=None, progress=False)
        assert len(seen) == 2 and all(c is not None and bool((c == label).all()) for c in seen), (p_uncond, seen)
    # without labels (cond None), and with K = 2
    seen.clear()
    dl.train_masked_diffusion(x, model=Spy(), steps=1, batch_size=8, ema_decay=None, progress=False)
    assert seen == [None]
    _, losses2 = dl.train_masked_diffusion((x > 1).long(), steps=1, batch_size=8, progress=False, net=net)
    assert len(losses2) == 1
    for tokens, kw in ((torch.zeros(4, 3, dtype=torch.long), {}), (x, {"K": 1})):
        with pytest.raises(ValueError, match=r"^K must be an integer in \[2, inf\], got 1$"):
            dl.train_masked_diffusion(tokens, steps=1, **kw)
    with pytest.raises(ValueError, match=r"^tokens must be \(N, L, \.\.\.\), got shape \(5,\)$"):
        dl.train_masked_diffusion(torch.arange(5) % 2, steps=1)
    with pytest.raises(ValueError, match=re.escape("cond must be None or an integer tensor of labels with shape (64,), got (3,)")):
        dl.train_masked_diffusion(x, torch.zeros(3, dtype=torch.long), steps=1)


def test_loss_and_trainer_keep_the_model_and_t_on_the_device():
    from test_device_discipline import FAKE, run_on_device, to_host
    x0, t = _draw(6, 51), torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0, 0.5])
    net = dl.TokenMLP((L,), K=K, hidden=8, depth=1, emb_dim=4, token_dim=2)
    want = dl.masked_diffusion_loss(net, x0, generator=torch.Generator().manual_seed(52), t=t)
    # t given on the device: the masks are drawn on the CPU and compared with t there (not mixed with the device)
    got, rec = run_on_device(lambda: dl.masked_diffusion_loss(net.to(FAKE), x0.to(FAKE),
                                                              generator=torch.Generator().manual_seed(52), t=t.to(FAKE)))
    net.to("cpu")
    assert not rec.float64, rec.float64
    torch.testing.assert_close(to_host(got), want)
    # a model on the device trains there when device is not given
    dev, _ = run_on_device(lambda: next(dl.train_masked_diffusion(x0, model=net.to(FAKE), steps=1, batch_size=4,
                                                                 progress=False)[0].parameters()).device)
    assert dev == FAKE


def test_sampler_defaults_progress_callback_times_and_messages_found_by_mutation(capsys):
    calls = []

    def spy(xt, t, cond=None):
        calls.append(float(t[0]))
        return torch.zeros(*xt.shape, K)
    x = dl.masked_diffusion_sample(spy, (2, L), K=K, generator=torch.Generator().manual_seed(61))
    assert len(calls) == 100 and x.dtype == torch.long       # default 100 steps, long tokens
    assert capsys.readouterr().err == ""                      # silent by default
    calls.clear()
    seen = []
    dl.masked_diffusion_sample(spy, (2, L), steps=3, K=K, progress=True, callback=lambda d: seen.append((d["step"], d["t"])))
    assert "masked_diffusion_sample: 100%" in capsys.readouterr().err
    # the grid t_i = 1 - i/steps in float64: model at 1, 2/3, 1/3, callback at s = 2/3, 1/3, 0
    assert calls == [1.0, float(torch.tensor(2 / 3, dtype=torch.float32)), float(torch.tensor(1 / 3, dtype=torch.float32))]
    assert seen == [(0, 1 - 1 / 3), (1, 1 - 2 / 3), (2, 0.0)], seen

    def nan(xt, t, cond=None):
        return torch.full((*xt.shape, K), float("nan"))
    msg = "model returned non-finite logits (NaN or inf) at step 0 (t = 1): the model is broken or diverged"
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        dl.masked_diffusion_sample(nan, (2, L), steps=2, K=K)
    with pytest.raises(ValueError, match=r"^shape entry must be an integer in \[1, inf\], got 0$"):
        dl.masked_diffusion_sample(spy, (2, 0), K=K)
    with pytest.raises(ValueError, match=re.escape("cond must be None or an integer tensor of labels with shape (2,), got (3,)")):
        dl.masked_diffusion_sample(spy, (2, L), K=K, cond=torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="^generator must be a torch.Generator or None, got int$"):
        dl.masked_diffusion_sample(spy, (2, L), K=K, generator=0)
    calls.clear()
    with pytest.raises(TypeError, match="^callback must be callable or None, got int$"):
        dl.masked_diffusion_sample(spy, (2, L), K=K, callback=1)
    assert calls == []                                         # refused before any model call


def test_oracle_checks_its_table_with_exact_messages():
    two = dl.MaskedOracle(torch.tensor([0.25, 0.75], dtype=torch.float64))    # K = 2, L = 1; a zero entry is fine
    assert two.config == {"K": 2, "sample_shape": (1,)}
    torch.testing.assert_close(two(torch.tensor([[2]])).double().exp(), torch.tensor([[[0.25, 0.75]]], dtype=torch.float64))
    assert dl.MaskedOracle(P.reshape(K, K, K)).config == {"K": K, "sample_shape": (L,)}
    dl.MaskedOracle(torch.tensor([[0.5, 0.0], [0.25, 0.25]]))
    with pytest.raises(TypeError, match="^probs must be a torch.Tensor, got list$"):
        dl.MaskedOracle([0.5, 0.5])
    for bad, total in ((torch.tensor([[0.75, 0.5], [0.0, -0.25]]), "1"), (torch.tensor([0.75, 0.75]), "1.5")):
        with pytest.raises(ValueError, match=re.escape("probs must be a probability table of shape (K,) * L summing to 1, "
                                                       f"got shape {tuple(bad.shape)} and sum {total}")):
            dl.MaskedOracle(bad)
    with pytest.raises(ValueError, match=r"^K must be an integer in \[2, inf\], got 1$"):
        dl.MaskedOracle(torch.ones(1, 1))


def test_sampler_draws_only_from_its_generator():
    def model(xt, t, cond=None):
        return torch.zeros(*xt.shape, K)
    state = torch.get_rng_state()
    a = dl.masked_diffusion_sample(model, (8, L), steps=3, K=K, generator=torch.Generator().manual_seed(71))
    assert torch.equal(torch.get_rng_state(), state)          # no global draw (the token or the reveal draw)
    torch.manual_seed(123)
    b = dl.masked_diffusion_sample(model, (8, L), steps=3, K=K, generator=torch.Generator().manual_seed(71))
    torch.set_rng_state(state)
    assert torch.equal(a, b)


def test_nll_weights_written_out_with_binomials():
    """_count_weights against Python floats and math.comb: c_m = 1/m in continuous time; with T steps
    c_m = C(L, m) W_m, W_m = sum_s (1/s) (s/T)^m (1 - s/T)^(L-m), and P(s | m) = w_m(s) / W_m, to 1e-12 (the weights
    in float32, for m or for s = k/T, are off by 1e-8 or more); T = 1 masks every token: only m = L has weight."""
    from diffusion_lab.masked import _count_weights
    for Lk in (3, 7, 30):
        c, probs = _count_weights(Lk, None)
        assert probs is None and c.dtype == torch.float64
        torch.testing.assert_close(c, torch.tensor([1 / m for m in range(1, Lk + 1)], dtype=torch.float64),
                                   rtol=1e-15, atol=0)
        for T in (1, 3, 10):
            c, probs = _count_weights(Lk, T)
            for m in range(1, Lk + 1):
                w = [(1 / s) * (s / T) ** m * (1 - s / T) ** (Lk - m) for s in range(1, T + 1)]
                W = sum(w)
                assert float(c[m - 1]) == pytest.approx(math.comb(Lk, m) * W, rel=1e-12, abs=1e-300), (Lk, T, m)
                if W > 0:
                    assert probs[m - 1].tolist() == pytest.approx([v / W for v in w], rel=1e-12, abs=1e-15)
            assert probs.sum(1).tolist() == pytest.approx([1.0] * Lk, rel=1e-12)    # a law of s for every m
            if T == 1:
                assert float(c[:-1].abs().max()) == 0 and float(c[-1]) == pytest.approx(1.0, rel=1e-14)


def test_sampler_replayed_by_hand():
    """Ancestral unmasking written out for a fixed-logits model, 3 steps: at t = 1 - i/3 -> s, each still-masked
    token takes the inverse-CDF draw of a float32 uniform (the first index whose float32 cumulative probability
    reaches u) if a float64 uniform falls below (t - s) / t; both uniforms from the generator, in that order."""
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.1], [1.5, 0.0, -0.5, 0.2], [-2.0, 0.4, 0.4, 1.0]])   # (L, K)

    def model(xt, t, cond=None):
        return logits.expand(*xt.shape, K)
    steps, shape = 3, (64, L)
    out = dl.masked_diffusion_sample(model, shape, steps=steps, K=K, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    cdf = torch.softmax(logits, -1).cumsum(-1)
    x = torch.full(shape, K)
    for i in range(steps):
        t, s = 1 - i / steps, 1 - (i + 1) / steps
        u = torch.rand(shape, generator=g)
        draw = torch.tensor([[min(int((cdf[j] < u[b, j]).sum()), K - 1) for j in range(L)] for b in range(shape[0])])
        reveal = torch.rand(shape, generator=g, dtype=torch.float64) < (t - s) / t
        x = torch.where((x == K) & reveal, draw, x)
    assert bool((x < K).all()) and torch.equal(out, x)


def test_sampler_never_returns_the_mask_when_a_uniform_passes_the_float32_cdf(monkeypatch):
    """A float32 softmax's cumulative sum can end one ulp below 1 and a float32 uniform can be 1 - 2^-24 above it:
    the inverse-CDF draw must then take the last token, not the mask K (the clamp to K - 1). The token uniform is
    forced to 1 - 2^-24; logits found whose float32 cdf ends below it."""
    Kb, g = 100, torch.Generator().manual_seed(0)
    top = 1 - 2.0 ** -24
    for _ in range(200):
        lg = torch.randn(Kb, generator=g) * 3
        if float(torch.softmax(lg, -1).cumsum(-1)[-1]) < top:
            break
    else:
        pytest.fail("no logits with a float32 cdf ending below 1 - 2^-24 in 200 draws")
    real_rand = torch.rand

    def rand(*args, **kwargs):                  # the float32 token uniform pinned at its largest value
        out = real_rand(*args, **kwargs)
        return torch.full_like(out, top) if out.dtype == torch.float32 else out
    monkeypatch.setattr(torch, "rand", rand)
    x = dl.masked_diffusion_sample(lambda xt, t, cond=None: lg.expand(*xt.shape, Kb), (4, 2), steps=1, K=Kb,
                                   generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, torch.full((4, 2), Kb - 1))


def test_nll_replayed_by_hand_on_the_cpu_and_the_device():
    """masked_diffusion_nll written out for the table spy model: m ~ U{1..L} (randint), float64 uniforms u (B, L),
    the m smallest masked; continuous time: t = the m-th smallest u and c_m = 1/m; T steps: t = s/T with s drawn
    from P(s | m) (multinomial); the estimate is c_m times the masked cross-entropy, in bits. All from the
    generator: the global RNG reseeded in between changes nothing. A batch of one; on the simulated device the
    masks, x_t and t reach the model there, with the CPU numbers."""
    from test_device_discipline import FAKE, run_on_device, to_host

    from diffusion_lab.masked import _count_weights
    x0 = _draw(16, 3)
    for steps in (None, 4):
        spy = _TableLogits()
        torch.manual_seed(1)
        got = dl.masked_diffusion_nll(spy, x0, steps=steps, generator=torch.Generator().manual_seed(8), K=K)
        g = torch.Generator().manual_seed(8)
        c, probs = _count_weights(L, steps)
        m = torch.randint(1, L + 1, (16,), generator=g)
        u = torch.rand(16, L, generator=g, dtype=torch.float64)
        kth = u.sort(1).values[torch.arange(16), m - 1]
        if steps is None:
            t = kth
            assert torch.equal(c[m - 1], 1 / m.double())
        else:
            t = (torch.multinomial(probs[m - 1], 1, generator=g).squeeze(1) + 1).double() / steps
        mask = u <= kth[:, None]
        assert torch.equal(mask.sum(1), m)
        xt = torch.where(mask, K, x0)
        logp = torch.log_softmax((spy.W[xt] + spy.P).double(), -1).gather(-1, x0[..., None]).squeeze(-1)
        want = c[m - 1] * -(logp * mask).sum(1) / math.log(2)
        (xt_seen, t_seen, _), = spy.calls
        assert torch.equal(xt_seen, xt) and torch.equal(t_seen, t.float())
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert dl.masked_diffusion_nll(_TableLogits(), x0[:1], generator=torch.Generator().manual_seed(8), K=K).shape == (1,)

    table = _TableLogits()

    def on(device):
        W, P = table.W.to(device), table.P.to(device)
        return dl.masked_diffusion_nll(lambda xt, t, cond=None: W[xt] + P + 0 * t[:, None, None], x0.to(device),
                                       steps=4, generator=torch.Generator().manual_seed(9), K=K)
    out, _ = run_on_device(lambda: on(FAKE))
    torch.testing.assert_close(to_host(out), on("cpu"), rtol=0, atol=0)


def test_k_logits_and_x0_messages_found_by_mutation():
    """K is named and must be >= 2 (K = 2 works); a model without config['K'] is named by its type; a model's
    wrong logits are described by their shape or type; a single sequence is not a batch; the generator is checked."""
    x = _draw(4, 0)
    spy = _TableLogits()
    with pytest.raises(ValueError, match=r"without config\['K'\] \(function\)"):
        dl.masked_diffusion_loss(lambda xt, t, cond=None: spy(xt, t), x)
    with pytest.raises(ValueError, match=r"K must be an integer in \[2, inf\], got 1"):
        dl.masked_diffusion_loss(spy, x, K=1)
    two = dl.masked_diffusion_loss(lambda xt, t, cond=None: torch.zeros(*xt.shape, 2), x % 2, K=2)
    assert float(two) > 0
    with pytest.raises(ValueError, match=r"logits of shape \(4, 3, 4\) \(one per data category\), got \(4, 3, 5\)"):
        dl.masked_diffusion_loss(lambda xt, t, cond=None: torch.zeros(*xt.shape, K + 1), x, K=K)
    with pytest.raises(ValueError, match=r"logits of shape \(4, 3, 4\) \(one per data category\), got list"):
        dl.masked_diffusion_loss(lambda xt, t, cond=None: [0.0], x, K=K)
    with pytest.raises(ValueError, match=r"x0 must be a batch of token sequences \(B, L, ...\), got shape \(3,\)"):
        dl.masked_diffusion_nll(spy, x[0], K=K)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got str"):
        dl.masked_diffusion_nll(spy, x, generator="seed", K=K)
