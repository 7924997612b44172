"""digits_cfg_small (scripts/make_checkpoints.py digits_cfg_small): the class-conditional DDPM that chapter 12 sets
beside digits_flow. Its point is the same budget, so the test pins that: the same network class and size, the same
training settings as digits_flow's meta, a relative command, and a working CFG sampler."""
import torch

import diffusion_lab as dl


def test_digits_cfg_small_has_digits_flows_network_and_budget():
    """Same TimeMLP architecture and parameter count as digits_flow's VelocityMLP, the same recorded training settings
    (steps, batch, lr, net) and label dropout; a checkpoint made with other settings (e.g. digits_cfg's width 256,
    depth 4: 4x the parameters) fails."""
    ddpm, meta = dl.load_pretrained("digits_cfg_small")
    flow, flow_meta = dl.load_pretrained("digits_flow")
    assert type(ddpm) is dl.TimeMLP and isinstance(flow, dl.TimeMLP)
    assert ddpm.config == flow.config
    assert sum(p.numel() for p in ddpm.parameters()) == sum(p.numel() for p in flow.parameters())
    assert meta["train"] == flow_meta["train"] and meta["p_uncond"] == flow_meta["p_uncond"]
    assert meta["command"] == "python scripts/make_checkpoints.py digits_cfg_small"
    assert (meta["schedule"], meta["T"], meta["num_classes"]) == ("linear", 1000, 10)


def test_digits_cfg_small_samples_recognisable_digits_with_cfg():
    """CFG scale 2, 10 DDIM steps (20 network calls), 20 samples per class: the judge recognises >= 95% (measured
    100%, and 99% unguided at scale 1). Scale 0, the unconditional model, scores 6%: a model that ignored the labels
    would fail."""
    ddpm, meta = dl.load_pretrained("digits_cfg_small")
    judge, _ = dl.load_pretrained("digits_judge")
    cond = torch.arange(10).repeat_interleave(20)
    x = dl.ddim_sample(dl.cfg(ddpm, 2.0), dl.make_schedule(meta["schedule"], meta["T"]), (200, 1, 8, 8), steps=10,
                       cond=cond, generator=torch.Generator().manual_seed(0), clip_x0=1.0)
    acc = dl.classifier_accuracy(judge, x, cond)
    assert acc >= 0.95, acc
