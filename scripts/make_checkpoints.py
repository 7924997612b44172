"""Regenerate the pretrained checkpoints shipped in diffusion_lab/checkpoints/.

    python scripts/make_checkpoints.py            # all of them
    python scripts/make_checkpoints.py digits_ddpm digits_cfg

Each is made by the package's own trainers with the settings below, seeded, and records the
command that made it in its meta["command"]. Times on a 2-core CPU are a few minutes each.
"""
import os
import sys
import time
from pathlib import Path

import torch

import diffusion_lab as dl
from diffusion_lab.cli import main as cli_main

OUT = Path(dl.__file__).parent / "checkpoints"
# The CLI records its own argv in meta["command"]: give it the output path relative to the
# working directory (the repository root), so no machine's absolute path is stored or printed.
OUT_ARG = Path(os.path.relpath(OUT))
COMMAND = "python scripts/make_checkpoints.py {name}"


# The digit denoisers are MLPs over the 64 flattened pixels (arch="mlp"): on a CPU they train and
# sample several times faster than the U-Net, which the book keeps for larger images.
DENOISER = ["--arch", "mlp", "--width", "256", "--depth", "4", "--steps", "4000", "--batch-size", "128", "--lr", "1e-3",
            "--no-progress"]


def digits_ddpm():
    cli_main(["train", "--data", "digits", *DENOISER, "--out", str(OUT_ARG / "digits_ddpm.pt")])


def digits_cfg():
    cli_main(["train", "--data", "digits", "--conditional", *DENOISER, "--out", str(OUT_ARG / "digits_cfg.pt")])


def digits_noisy_classifier():
    x, y = dl.load_digits()
    model, losses = dl.train_classifier(x, y, steps=3000, batch_size=128, lr=1e-3, progress=False,
                                        net={"arch": "mlp", "hidden": 256})
    dl.save_checkpoint(OUT / "digits_noisy_classifier.pt", model,
                       {"T": 1000, "schedule": "linear", "final_loss": sum(losses[-100:]) / 100,
                        "command": COMMAND.format(name="digits_noisy_classifier")})


def digits_judge():
    clf, acc = dl.train_digits_classifier(steps=1500, seed=0)
    dl.save_checkpoint(OUT / "digits_judge.pt", clf, {"heldout_accuracy": acc, "seed": 0, "test_fraction": 0.25,
                                                        "command": COMMAND.format(name="digits_judge")})


def digits_vae():
    x, _ = dl.load_digits()
    model, losses = dl.train_vae(x, latent_dim=2, steps=3000, batch_size=128, lr=1e-3, progress=False)
    dl.save_checkpoint(OUT / "digits_vae.pt", model, {"latent_dim": 2, "beta": 1.0, "decoder_std": 0.2,
                                                      "final_loss": sum(losses[-100:]) / 100,
                                                      "command": COMMAND.format(name="digits_vae")})


# A class-conditional flow (flow matching on the linear path, velocity model, label dropout for CFG):
# a smaller MLP than the denoisers' (width 128, depth 3: ~0.6 MB) suffices for the judge's >= 95% at 20 NFE.
FLOW = {"steps": 4000, "batch_size": 128, "lr": 1e-3, "net": {"arch": "mlp", "hidden": 128, "depth": 3}}
FLOW_SAMPLING = {"path": "linear", "prediction": "velocity", "method": "euler", "steps": 20, "cfg_scale": 2.0}


def digits_flow():
    x, y = dl.load_digits()
    model, losses = dl.train_flow(x, y, progress=False, **FLOW)
    dl.save_checkpoint(OUT / "digits_flow.pt", model,
                       {**FLOW_SAMPLING, "p_uncond": dl.TrainConfig().p_uncond, "train": FLOW,
                        "final_loss": sum(losses[-100:]) / 100, "command": COMMAND.format(name="digits_flow")})


# The class-conditional DDPM with exactly digits_flow's network and training settings (FLOW above): chapter 12 sets
# the two side by side, same network, same optimizer steps and batches, so the same training budget.
def digits_cfg_small():
    x, y = dl.load_digits()
    model, losses = dl.train_ddpm(x, y, progress=False, **FLOW)
    dl.save_checkpoint(OUT / "digits_cfg_small.pt", model,
                       {"T": dl.TrainConfig().T, "schedule": dl.TrainConfig().schedule, "sample_shape": [1, 8, 8],
                        "num_classes": 10, "p_uncond": dl.TrainConfig().p_uncond, "train": FLOW,
                        "final_loss": sum(losses[-100:]) / 100, "command": COMMAND.format(name="digits_cfg_small")})


# Masked diffusion on the digits as tokens (64 pixels, 17 grey levels), class-conditional, trained on the first
# MASKED_N_TRAIN digits so that the other 297 measure bits per token on unseen data. A small network and a short
# run: held-out bits stop improving after ~1000 steps (2.02 bits per token at 1000, 2.03 at 1500: the model starts
# to memorise its 1500 digits; with width 256 the same run to 4000 steps reached 2.66, worse than the per-pixel
# baseline's 2.37).
MASKED = {"steps": 1000, "batch_size": 128, "lr": 1e-3, "net": {"hidden": 128, "depth": 2, "token_dim": 8}}
MASKED_N_TRAIN = 1500
MASKED_SAMPLING = {"sample_steps": 64, "cfg_scale": 2.0}


def digits_masked():
    tokens, y = dl.load_digit_tokens()
    n = MASKED_N_TRAIN
    model, losses = dl.train_masked_diffusion(tokens[:n], y[:n], K=17, progress=False, **MASKED)
    # what the book and tests check against: the judge's rate on 100 guided samples (10 per class), held-out bits
    judge, _ = dl.load_pretrained("digits_judge")
    labels = torch.arange(10).repeat(10)
    x = dl.masked_diffusion_sample(dl.cfg(model, MASKED_SAMPLING["cfg_scale"]), (100, 64),
                                   steps=MASKED_SAMPLING["sample_steps"], cond=labels, K=17,
                                   generator=torch.Generator().manual_seed(0))
    acc = dl.classifier_accuracy(judge, x.reshape(-1, 1, 8, 8) / 8.0 - 1.0, labels)
    nll = dl.masked_diffusion_nll(model, tokens[n:].repeat(8, 1), cond=y[n:].repeat(8),
                                  generator=torch.Generator().manual_seed(1))
    dl.save_checkpoint(OUT / "digits_masked.pt", model,
                       {**MASKED_SAMPLING, "n_train": n, "K": 17, "p_uncond": dl.TrainConfig().p_uncond,
                        "train": MASKED, "first_losses": losses[:50], "final_loss": sum(losses[-100:]) / 100,
                        "judge_accuracy": acc, "heldout_bits_per_token": float(nll.mean()),
                        "command": COMMAND.format(name="digits_masked")})


# A class-conditional consistency model distilled from digits_flow (consistency distillation, chapter 14) on the
# flow's linear path cut at t_max = 0.999 (the parameterisation divides by alpha = 1 - t). Saved as its network F;
# rebuild with dl.ConsistencyModel(net, dl.linear_path(meta["t_max"]), meta["sigma_data"]).
CD = {"steps": 3000, "batch_size": 128, "lr": 1e-3, "net": {"arch": "mlp", "hidden": 256, "depth": 3}}
CD_SETUP = {"teacher": "digits_flow", "prediction": "velocity", "t_max": 0.999, "sigma_data": 0.5, "N": 18,
            "solver": "heun"}


def digits_cd():
    x, y = dl.load_digits()
    teacher, _ = dl.load_pretrained("digits_flow")
    model, losses = dl.consistency_distill(teacher, dl.linear_path(CD_SETUP["t_max"]), x, y, prediction="velocity",
                                           N=CD_SETUP["N"], solver=CD_SETUP["solver"],
                                           sigma_data=CD_SETUP["sigma_data"], progress=False, **CD)
    dl.save_checkpoint(OUT / "digits_cd.pt", model.net,
                       {**CD_SETUP, "p_uncond": dl.TrainConfig().p_uncond, "train": CD,
                        "first_losses": losses[:20], "final_loss": sum(losses[-100:]) / 100,
                        "command": COMMAND.format(name="digits_cd")})


# The trained two-moons models of chapter 13 (moons_ddpm is also chapter 14's distillation teacher): train_ddpm /
# train_flow with TrainConfig's defaults (4,500 steps, TimeMLP width 128, depth 3) on 5,000 points of the two moons
# (seed 0); scripts/make_sampler_sweep.py samples them.
MOONS = {"toy": "moons", "n": 5000, "seed": 0}


def _moons():
    return dl.make_toy(MOONS["toy"], MOONS["n"], torch.Generator().manual_seed(MOONS["seed"]))[0]


def moons_ddpm():
    model, losses = dl.train_ddpm(_moons(), progress=False)
    dl.save_checkpoint(OUT / "moons_ddpm.pt", model, {**MOONS, "T": 1000, "schedule": "linear",
                                                      "final_loss": sum(losses[-100:]) / 100,
                                                      "command": COMMAND.format(name="moons_ddpm")})


def moons_flow():
    model, losses = dl.train_flow(_moons(), progress=False)
    dl.save_checkpoint(OUT / "moons_flow.pt", model, {**MOONS, "path": "linear", "prediction": "velocity",
                                                      "final_loss": sum(losses[-100:]) / 100,
                                                      "command": COMMAND.format(name="moons_flow")})


ALL = {f.__name__: f for f in (digits_ddpm, digits_cfg, digits_noisy_classifier, digits_judge, digits_vae, digits_flow,
                               digits_cfg_small, digits_masked, digits_cd, moons_ddpm, moons_flow)}

if __name__ == "__main__":
    torch.set_num_threads(1)   # several of these run side by side; one thread each avoids oversubscription
    names = sys.argv[1:] or list(ALL)
    for name in names:
        if name not in ALL:
            raise SystemExit(f"unknown checkpoint {name!r}; choose from {sorted(ALL)}")
        t0 = time.time()
        ALL[name]()
        print(f"{name}: {time.time() - t0:.0f} s")
