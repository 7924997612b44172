"""Regenerate the pretrained checkpoints shipped in diffusion_lab/checkpoints/.

    python scripts/make_checkpoints.py            # all of them
    python scripts/make_checkpoints.py digits_ddpm digits_cfg

Each is made by the package's own trainers with the settings below, seeded, and records the
command that made it in its meta["command"]. Times on a 2-core CPU are a few minutes each.
"""
import sys
import time
from pathlib import Path

import torch

import diffusion_lab as dl
from diffusion_lab.cli import main as cli_main

OUT = Path(dl.__file__).parent / "checkpoints"
COMMAND = "python scripts/make_checkpoints.py {name}"


# The digit denoisers are MLPs over the 64 flattened pixels (arch="mlp"): on a CPU they train and
# sample several times faster than the U-Net, which the book keeps for larger images.
DENOISER = ["--arch", "mlp", "--width", "256", "--depth", "4", "--steps", "4000", "--batch-size", "128", "--lr", "1e-3",
            "--no-progress"]


def digits_ddpm():
    cli_main(["train", "--data", "digits", *DENOISER, "--out", str(OUT / "digits_ddpm.pt")])


def digits_cfg():
    cli_main(["train", "--data", "digits", "--conditional", *DENOISER, "--out", str(OUT / "digits_cfg.pt")])


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


# Chapter 13's trained 2-D models: train_ddpm / train_flow with TrainConfig's defaults (4,500 steps, TimeMLP
# width 128, depth 3) on 5,000 points of the two moons (seed 0); scripts/make_sampler_sweep.py samples them.
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


ALL = {f.__name__: f for f in (digits_ddpm, digits_cfg, digits_noisy_classifier, digits_judge, digits_vae, digits_flow, moons_ddpm,
                                     moons_flow)}

if __name__ == "__main__":
    torch.set_num_threads(1)   # several of these run side by side; one thread each avoids oversubscription
    names = sys.argv[1:] or list(ALL)
    for name in names:
        if name not in ALL:
            raise SystemExit(f"unknown checkpoint {name!r}; choose from {sorted(ALL)}")
        t0 = time.time()
        ALL[name]()
        print(f"{name}: {time.time() - t0:.0f} s")
