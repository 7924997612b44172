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


# The two-moons teacher of chapter 14 (train_ddpm with its defaults on 5,000 points, seed 0: ~1 min of CPU).
def moons_ddpm():
    x = dl.two_moons(5000, generator=torch.Generator().manual_seed(0))
    model, losses = dl.train_ddpm(x, progress=False)
    dl.save_checkpoint(OUT / "moons_ddpm.pt", model,
                       {"T": dl.TrainConfig().T, "schedule": dl.TrainConfig().schedule, "n": 5000, "data_seed": 0,
                        "final_loss": sum(losses[-100:]) / 100, "command": COMMAND.format(name="moons_ddpm")})


ALL = {f.__name__: f for f in (digits_ddpm, digits_cfg, digits_noisy_classifier, digits_judge, digits_vae, digits_flow,
                               digits_cd, moons_ddpm)}

if __name__ == "__main__":
    torch.set_num_threads(1)   # several of these run side by side; one thread each avoids oversubscription
    names = sys.argv[1:] or list(ALL)
    for name in names:
        if name not in ALL:
            raise SystemExit(f"unknown checkpoint {name!r}; choose from {sorted(ALL)}")
        t0 = time.time()
        ALL[name]()
        print(f"{name}: {time.time() - t0:.0f} s")
