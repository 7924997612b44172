"""Trainers, EMA and checkpoints: a short run learns the exact epsilon of a Gaussian, runs are
deterministic given the seed, label dropout feeds the null label, divergence stops with an error,
checkpoints round-trip and reject corrupt or mismatched files, and bad input."""
import pytest
import torch
import torch.nn as nn

import diffusion_lab as dl

TINY = dict(hidden=32, depth=2, emb_dim=16)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


class Recorder(nn.Module):
    """A linear epsilon model that records the labels it is trained with."""

    def __init__(self, dim=2, out=None):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.seen = []
        self.out = out

    def forward(self, x, t, cond=None):
        self.seen.append(None if cond is None else cond.clone())
        y = self.lin(x)
        return y * self.out if self.out is not None else y


def test_train_ddpm_learns_the_exact_epsilon_of_a_gaussian():
    # 400 steps on N(2, 0.5^2): the trained model's loss on fresh data must come within 15% of
    # the exact (oracle) epsilon's loss, the minimum possible (measured: 3% above). Both losses
    # use the same t and noise draws, so the comparison is paired; the zero model scores ~1.
    data = torch.randn(2000, 1, generator=_gen(0)) * 0.5 + 2.0
    model, losses = dl.train_ddpm(data, steps=400, batch_size=256, lr=3e-3, warmup=20, progress=False, net=TINY)
    assert len(losses) == 400 and sum(losses[-50:]) < 0.5 * sum(losses[:50])
    s = dl.make_schedule("linear", 1000)
    fresh = torch.randn(20_000, 1, generator=_gen(1)) * 0.5 + 2.0
    oracle = dl.GaussianMixture([[2.0]], stds=0.5).eps_model(s)
    with torch.no_grad():
        l_model = dl.ddpm_loss(model, s, fresh, generator=_gen(2)).item()
    l_oracle = dl.ddpm_loss(oracle, s, fresh, generator=_gen(2)).item()
    assert 0.97 * l_oracle < l_model < 1.15 * l_oracle, (l_model, l_oracle)
    x = dl.ddim_sample(model, s, (2000, 1), steps=50, generator=_gen(3))
    assert abs(x.median().item() - 2.0) < 0.15   # robust centre of the samples (seeded)


def test_train_ddpm_is_deterministic_and_leaves_the_global_rng_alone():
    data = torch.randn(300, 2, generator=_gen(4))
    state = torch.random.get_rng_state()
    m1, l1 = dl.train_ddpm(data, steps=15, batch_size=64, progress=False, net=TINY, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())
    m2, l2 = dl.train_ddpm(data, steps=15, batch_size=64, progress=False, net=TINY, seed=3)
    _, l3 = dl.train_ddpm(data, steps=15, batch_size=64, progress=False, net=TINY, seed=4)
    assert l1 == l2 and l1 != l3
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    assert not m1.training  # returned in eval mode


def test_schedule_can_be_given_by_name_or_as_an_object():
    data = torch.randn(300, 2, generator=_gen(7))
    kw = dict(steps=15, batch_size=64, progress=False, net=TINY, T=50)
    by_name, _ = dl.train_ddpm(data, schedule="cosine", **kw)
    by_object, _ = dl.train_ddpm(data, schedule=dl.make_schedule("cosine", 50), **kw)
    linear, _ = dl.train_ddpm(data, **kw)
    for a, b in zip(by_name.parameters(), by_object.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(by_name.inp.weight, linear.inp.weight)
    with pytest.raises(ValueError, match="schedule must be 'linear' or 'cosine'"):
        dl.train_ddpm(data, schedule="quadratic", **kw)
    with pytest.raises(TypeError, match="schedule must be a Schedule"):
        dl.train_ddpm(data, schedule=0.5, **kw)
    with pytest.raises(TypeError, match="schedule must be a Schedule"):
        dl.train_classifier(data, torch.zeros(300, dtype=torch.long), schedule=[0.1], **kw)


def test_ema_is_returned_and_follows_the_update_rule():
    data = torch.randn(300, 2, generator=_gen(5))
    raw = {}
    cb = lambda info: raw.update(model=info["model"])  # noqa: E731
    ema_model, _ = dl.train_ddpm(data, steps=20, batch_size=64, progress=False, net=TINY, ema_decay=0.9, callback=cb)
    assert ema_model is not raw["model"]
    assert not torch.equal(ema_model.inp.weight, raw["model"].inp.weight)
    plain, _ = dl.train_ddpm(data, steps=20, batch_size=64, progress=False, net=TINY, ema_decay=None, callback=cb)
    assert plain is raw["model"]
    # The rule: shadow <- d shadow + (1 - d) param, d = min(decay, (1 + step) / (10 + step)).
    lin = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    ema = dl.EMA(lin, 0.5)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema.update(lin, step=100)              # d = min(0.5, 101 / 110) = 0.5
    assert float(ema.shadow.weight) == pytest.approx(0.5)
    ema.update(lin, step=0)                # d = min(0.5, 1 / 10) = 0.1
    assert float(ema.shadow.weight) == pytest.approx(0.1 * 0.5 + 0.9 * 1.0)


def test_ema_update_matches_a_per_tensor_loop_for_every_parameter_and_buffer():
    """EMA.update fuses all parameters into one call: it must equal the plain per-tensor rule
    on a model with many parameter tensors, and copy buffers (BatchNorm statistics) as they are."""
    def net():
        return nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.SiLU(), nn.Linear(5, 2))
    torch.manual_seed(0)
    model = net()
    ema = dl.EMA(model, 0.9)
    reference = [p.detach().clone() for p in model.parameters()]
    for step in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(8, 3))         # changes the BatchNorm running statistics
        ema.update(model, step)
        d = min(0.9, (1 + step) / (10 + step))
        reference = [r * d + p.detach() * (1 - d) for r, p in zip(reference, model.parameters())]
    for r, s in zip(reference, ema.shadow.parameters()):
        torch.testing.assert_close(s, r, rtol=1e-6, atol=1e-6)
    for b_model, b_ema in zip(model.buffers(), ema.shadow.buffers()):
        assert torch.equal(b_model, b_ema)


@pytest.mark.parametrize("p_uncond", [0.0, 1.0, 0.5])
def test_label_dropout_uses_the_null_label(p_uncond):
    data = torch.randn(400, 2, generator=_gen(6))
    labels = torch.arange(400) % 3
    rec = Recorder()
    dl.train_ddpm(data, labels, model=rec, steps=20, batch_size=100, progress=False, p_uncond=p_uncond, ema_decay=None)
    cond = torch.cat(rec.seen)
    null = (cond == 3).double().mean().item()
    assert int(cond.min()) >= 0 and int(cond.max()) <= 3
    if p_uncond in (0.0, 1.0):
        assert null == p_uncond
    else:
        assert abs(null - 0.5) < 5 * (0.25 / cond.numel()) ** 0.5   # 2000 Bernoulli(1/2) draws, 5 SE


def test_conditional_training_builds_a_conditional_network():
    x, y = dl.make_toy("mixture", 300, _gen(7))
    model, _ = dl.train_ddpm(x, y, steps=5, batch_size=64, progress=False, net=TINY)
    assert model.num_classes == 3
    out = model(x[:4], torch.zeros(4, dtype=torch.long), y[:4])
    assert out.shape == (4, 2)


def test_training_that_diverges_stops_with_an_error():
    data = torch.randn(100, 2, generator=_gen(8))
    with pytest.raises(dl.TrainingDivergedError, match="diverged"):
        dl.train_ddpm(data, model=Recorder(out=float("nan")), steps=5, batch_size=32, progress=False)


def test_image_training_runs():
    x, y = dl.load_digits()
    model, losses = dl.train_ddpm(x[:64], y[:64], steps=2, batch_size=8, progress=False, net=dict(base=8, emb_dim=16))
    assert isinstance(model, dl.UNet) and len(losses) == 2


def test_train_score_vae_and_classifier():
    data = torch.randn(500, 2, generator=_gen(9)) * 0.5 + 1.0
    sigmas = dl.geometric_sigmas(2.0, 0.05, 5)
    score, l_score = dl.train_score_model(data, sigmas, steps=150, batch_size=128, progress=False, net=TINY)
    assert isinstance(score, dl.ScoreMLP) and sum(l_score[-20:]) < sum(l_score[:20])
    vae, l_vae = dl.train_vae(data, steps=150, batch_size=128, progress=False, latent_dim=1, net=dict(hidden=16))
    assert isinstance(vae, dl.VAE) and sum(l_vae[-20:]) < sum(l_vae[:20])
    # Two well-separated classes: after training, clean points (t = 0) are classified correctly.
    gm = dl.GaussianMixture([[-2.0, 0.0], [2.0, 0.0]], stds=0.3, labels=[0, 1])
    x, y = gm.sample_labelled(600, _gen(10))
    clf, _ = dl.train_classifier(x, y, steps=150, batch_size=128, progress=False, net=dict(hidden=16, depth=1, emb_dim=16))
    with torch.no_grad():
        acc = (clf(x, torch.zeros(600, dtype=torch.long)).argmax(1) == y).double().mean().item()
    assert acc > 0.95, acc


def test_train_bad_input():
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match="data"):
        dl.train_ddpm(torch.zeros(10, 2, 2), steps=1, progress=False)
    with pytest.raises(ValueError, match="data"):
        dl.train_ddpm(x * float("nan"), steps=1, progress=False)
    with pytest.raises(TypeError, match="data"):
        dl.train_ddpm(x.numpy(), steps=1, progress=False)
    with pytest.raises(ValueError, match="labels"):
        dl.train_ddpm(x, torch.zeros(10), steps=1, progress=False)
    with pytest.raises(ValueError, match="labels"):
        dl.train_ddpm(x, torch.zeros(9, dtype=torch.long), steps=1, progress=False)
    with pytest.raises(ValueError, match="labels"):
        dl.train_ddpm(x, -torch.ones(10, dtype=torch.long), steps=1, progress=False)
    with pytest.raises(TypeError, match="learning_rate"):
        dl.train_ddpm(x, learning_rate=0.1)
    with pytest.raises(TypeError, match="config"):
        dl.train_ddpm(x, config={"steps": 1})
    for kw, name in [({"steps": 0}, "steps"), ({"lr": 0.0}, "lr"), ({"ema_decay": 1.0}, "ema_decay"),
                     ({"p_uncond": 1.5}, "p_uncond"), ({"schedule": "quadratic"}, "schedule"), ({"T": 0}, "T"),
                     ({"batch_size": 0}, "batch_size"), ({"grad_clip": -1.0}, "grad_clip")]:
        with pytest.raises(ValueError, match=name):
            dl.TrainConfig(**kw)
    with pytest.raises(ValueError, match="labels"):
        dl.train_classifier(x, None, steps=1, progress=False)
    with pytest.raises(ValueError, match="sigmas"):
        dl.train_score_model(x, [0.0], steps=1, progress=False)
    with pytest.raises(ValueError, match="vectors"):
        dl.train_score_model(torch.zeros(4, 1, 2, 2), [1.0], steps=1, progress=False)


# ---------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------
def _models():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return [dl.TimeMLP(dim=2, hidden=8, depth=1, emb_dim=8, num_classes=3),
                dl.UNet(in_channels=1, base=8, mults=(1, 2), emb_dim=16),
                dl.NoisyClassifier((2,), num_classes=3, hidden=8, depth=1, emb_dim=8),
                dl.ScoreMLP(dim=2, hidden=8, depth=1, emb_dim=8),
                dl.VAE((4,), latent_dim=2, hidden=8)]


@pytest.mark.parametrize("index", range(5))
def test_checkpoint_round_trip(tmp_path, index):
    model = _models()[index].eval()
    path = dl.save_checkpoint(tmp_path / "sub" / "m.pt", model, {"note": "hi", "T": 1000})
    loaded, meta = dl.load_checkpoint(path)
    assert type(loaded) is type(model) and meta == {"note": "hi", "T": 1000} and not loaded.training
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["m.pt"]   # no temporary file left behind


def test_checkpoint_errors(tmp_path):
    model = _models()[0]
    path = dl.save_checkpoint(tmp_path / "m.pt", model)
    with pytest.raises(FileNotFoundError):
        dl.load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "trunc.pt").write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="checkpoint"):
        dl.load_checkpoint(tmp_path / "trunc.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="checkpoint"):
        dl.load_checkpoint(tmp_path / "foreign.pt")
    # A file whose weights do not fit the recorded architecture.
    payload = torch.load(path, weights_only=True)
    payload["config"]["hidden"] = 16
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="shape"):
        dl.load_checkpoint(tmp_path / "mismatch.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"].pop(next(iter(payload["state_dict"])))
    torch.save(payload, tmp_path / "missing_key.pt")
    with pytest.raises(ValueError, match="missing"):
        dl.load_checkpoint(tmp_path / "missing_key.pt")
    with pytest.raises(TypeError, match="model"):
        dl.save_checkpoint(tmp_path / "x.pt", nn.Linear(2, 2))
    with pytest.raises(ValueError, match="name"):
        dl.load_pretrained("no_such_checkpoint")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoint_loading_never_unpickles_code(tmp_path):
    # weights_only=True refuses arbitrary objects: a clear error, not code execution.
    torch.save({"format": "diffusion_lab.checkpoint/1", "evil": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="checkpoint"):
        dl.load_checkpoint(tmp_path / "evil.pt")
