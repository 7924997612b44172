"""GPU lane: runs only where CUDA is present. Tensors must follow the model's / input's device,
and a seeded run with a CPU generator must match the CPU run (the noise is drawn on the
generator's device, then moved), up to float32 arithmetic differences between devices."""
import pytest
import torch

import diffusion_lab as dl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

S = dl.linear_schedule()
GM = dl.GaussianMixture([[1.0, -0.5], [-1.5, 1.0]], stds=[0.5, 0.4], labels=[0, 1])
CUDA = torch.device("cuda")


def _gen(seed):
    return torch.Generator().manual_seed(seed)  # a CPU generator, on purpose


def _tiny_mlp(num_classes=None):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return dl.TimeMLP(dim=2, hidden=32, depth=2, emb_dim=16, num_classes=num_classes).eval()


def test_get_device_prefers_cuda():
    assert dl.get_device().type == "cuda"


def test_gaussians_on_cuda_and_device_mismatch():
    mu, lv = torch.randn(100, generator=_gen(0)), torch.randn(100, generator=_gen(1))
    torch.testing.assert_close(dl.kl_std_normal(mu.to(CUDA), lv.to(CUDA)).cpu(), dl.kl_std_normal(mu, lv))
    z_gpu = dl.reparameterize(mu.to(CUDA), lv.to(CUDA), generator=_gen(2))
    assert z_gpu.device.type == "cuda"
    torch.testing.assert_close(z_gpu.cpu(), dl.reparameterize(mu, lv, generator=_gen(2)))
    with pytest.raises(ValueError, match="device"):
        dl.kl_normal(mu.to(CUDA), lv, mu, lv)


def test_forward_process_device_handling():
    x0, noise = torch.randn(4, 2, generator=_gen(3)), torch.randn(4, 2, generator=_gen(4))
    t = torch.tensor([0, 10, 500, 999])
    out = dl.q_sample(S, x0.to(CUDA), t.to(CUDA), noise.to(CUDA))
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), dl.q_sample(S, x0, t, noise))
    with pytest.raises(ValueError, match="noise"):
        dl.q_sample(S, x0.to(CUDA), t, noise)
    with pytest.raises(ValueError, match="xt"):
        dl.q_posterior(S, x0.to(CUDA), x0, 3)
    with pytest.raises(ValueError, match="eps"):
        dl.ddim_step(S, x0.to(CUDA), noise, 10, 5)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim_eta1", "ddim_eta0"])
def test_oracle_sampling_on_cuda_matches_cpu(sampler):
    model = GM.eps_model(S)
    kwargs = dict(generator=_gen(5))

    def run(device):
        if sampler == "ddpm":
            return dl.ddpm_sample(model, S, (256, 2), device=device, **kwargs)
        eta = 1.0 if sampler == "ddim_eta1" else 0.0
        return dl.ddim_sample(model, S, (256, 2), steps=50, eta=eta, device=device, **kwargs)

    kwargs["generator"] = _gen(5)
    cpu = run("cpu")
    kwargs["generator"] = _gen(5)
    gpu = run(CUDA)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)


def test_network_sampling_follows_the_model_device_and_matches_cpu():
    net = _tiny_mlp(num_classes=2)
    cond = torch.tensor([0, 1] * 32)
    cpu = dl.ddim_sample(net, S, (64, 2), steps=20, eta=1.0, cond=cond, generator=_gen(6))
    net_gpu = _tiny_mlp(num_classes=2).to(CUDA)
    gpu = dl.ddim_sample(net_gpu, S, (64, 2), steps=20, eta=1.0, cond=cond.to(CUDA), generator=_gen(6))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)
    guided = dl.cfg(net_gpu, 2.0)
    out = dl.ddpm_sample(guided, dl.linear_schedule(T=50, beta_start=1e-3, beta_end=0.2), (8, 2),
                         cond=torch.zeros(8, dtype=torch.long, device=CUDA), generator=_gen(7), device=CUDA)
    assert out.device.type == "cuda" and bool(torch.isfinite(out).all())


def test_unet_and_classifier_guidance_on_cuda():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = dl.UNet(in_channels=1, base=8, mults=(1, 2), emb_dim=16).to(CUDA).eval()
        clf = dl.NoisyClassifier((1, 8, 8), num_classes=10, base=8, emb_dim=16).to(CUDA).eval()
    s = dl.linear_schedule(T=20, beta_start=1e-3, beta_end=0.3)
    guided = dl.classifier_guidance(unet, clf, s, 1.0)
    x = dl.ddim_sample(guided, s, (4, 1, 8, 8), steps=5, cond=torch.arange(4, device=CUDA), generator=_gen(8), device=CUDA)
    assert x.device.type == "cuda" and x.shape == (4, 1, 8, 8)
    xT = dl.ddim_invert(unet, s, x, steps=5)
    assert xT.device.type == "cuda"


def test_langevin_on_cuda_matches_cpu():
    x = torch.zeros(500, 2)
    cpu = dl.langevin_sample(lambda y: -y, x, 0.05, 50, generator=_gen(9))
    gpu = dl.langevin_sample(lambda y: -y, x.to(CUDA), 0.05, 50, generator=_gen(9))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
    sig = dl.geometric_sigmas(1.0, 0.1, 3)
    out = dl.annealed_langevin_sample(lambda y, s: -y / (1 + s[:, None] ** 2), sig, x.to(CUDA), 0.01, 5, generator=_gen(10))
    assert out.device.type == "cuda"


def test_losses_on_cuda_match_cpu():
    x0 = torch.randn(64, 2, generator=_gen(11))
    net = _tiny_mlp()
    cpu = dl.ddpm_loss(net, S, x0, generator=_gen(12))
    gpu = dl.ddpm_loss(_tiny_mlp().to(CUDA), S, x0.to(CUDA), generator=_gen(12))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)
    score = lambda y, sigma: -y  # noqa: E731
    torch.testing.assert_close(dl.dsm_loss(score, x0.to(CUDA), [0.5, 1.0], generator=_gen(13)).cpu(),
                               dl.dsm_loss(score, x0, [0.5, 1.0], generator=_gen(13)), rtol=1e-5, atol=1e-6)


def test_training_on_cuda_matches_cpu_closely():
    data = torch.randn(500, 2, generator=_gen(14))
    kw = dict(steps=20, batch_size=64, progress=False, net=dict(hidden=32, depth=2, emb_dim=16))
    m_cpu, l_cpu = dl.train_ddpm(data, **kw)
    m_gpu, l_gpu = dl.train_ddpm(data, device=CUDA, **kw)
    assert next(m_gpu.parameters()).device.type == "cuda"
    torch.testing.assert_close(torch.tensor(l_gpu), torch.tensor(l_cpu), rtol=1e-3, atol=1e-4)
    x = dl.ddim_sample(m_gpu, S, (16, 2), steps=10, generator=_gen(15))
    assert x.device.type == "cuda"


def test_elbo_metrics_and_checkpoints_with_cuda(tmp_path):
    s = dl.linear_schedule(T=50, beta_start=1e-3, beta_end=0.2)
    x0 = torch.randn(32, 2, generator=_gen(16))
    net = _tiny_mlp()
    cpu = dl.ddpm_elbo(net, s, x0, generator=_gen(17))
    gpu = dl.ddpm_elbo(_tiny_mlp().to(CUDA), s, x0.to(CUDA), generator=_gen(17))
    assert gpu["total_nats"] == pytest.approx(cpu["total_nats"], rel=1e-4)
    a = torch.randn(300, 2, generator=_gen(18))
    b = a + 0.5
    assert dl.sliced_wasserstein(a.to(CUDA), b.to(CUDA), generator=_gen(19)) == pytest.approx(
        dl.sliced_wasserstein(a, b, generator=_gen(19)), rel=1e-9)
    assert dl.mmd(a.to(CUDA), b.to(CUDA)) == pytest.approx(dl.mmd(a, b), rel=1e-9)
    path = dl.save_checkpoint(tmp_path / "m.pt", net.to(CUDA))
    loaded, _ = dl.load_checkpoint(path, map_location="cuda")
    assert next(loaded.parameters()).device.type == "cuda"


def test_flow_loss_draws_with_a_cuda_generator_on_cuda():
    """A generator on the GPU draws t and eps there (issue 17: five mutants of flow.sample_t that draw on the CPU
    default device survive every CPU test, and would fail here with a CUDA generator)."""
    x0 = torch.randn(64, 2, generator=_gen(20)).to(CUDA)
    model = _tiny_mlp().to(CUDA)
    for t_sampling in ("uniform", "logit_normal"):
        g = torch.Generator(device=CUDA).manual_seed(21)
        loss = dl.flow_matching_loss(lambda x, t, c=None: model(x, t * 1000, c), x0, generator=g,
                                     t_sampling=t_sampling)
        assert loss.device.type == "cuda" and bool(torch.isfinite(loss))
