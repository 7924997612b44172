"""Command line: `python -m diffusion_lab train ...` and `python -m diffusion_lab sample ...`.

  python -m diffusion_lab train --data moons --out moons.pt
  python -m diffusion_lab train --data digits --conditional --steps 4000 --out digits_cfg.pt
  python -m diffusion_lab sample --ckpt digits_cfg.pt --label 3 --guidance 2 --out threes.png
"""
from __future__ import annotations

import argparse
import shlex
import sys

import torch

from .checkpoints import load_checkpoint, save_checkpoint
from .data import TOYS, load_digits, make_toy
from .ddim import ddim_sample
from .ddpm import ddpm_sample
from .guidance import cfg
from .schedules import make_schedule
from .train import TrainConfig, train_ddpm


def _load_data(name: str, n: int, seed: int):
    if name == "digits":
        return load_digits()
    return make_toy(name, n, torch.Generator().manual_seed(seed))


def cmd_train(args) -> int:
    x, y = _load_data(args.data, args.n, args.seed)
    if not args.conditional:
        y = None
    elif y is None:
        raise ValueError(f"--conditional needs labelled data (digits or mixture), got --data {args.data}")
    defaults = TrainConfig()
    mlp = x.ndim == 2 or args.arch == "mlp"
    net = {"arch": args.arch} if x.ndim == 4 else {}
    if args.width:
        net["hidden" if mlp else "base"] = args.width
    if args.depth and mlp:
        net["depth"] = args.depth
    config = TrainConfig(steps=args.steps or defaults.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         T=args.T, schedule=args.schedule, progress=not args.no_progress, net=net)
    model, losses = train_ddpm(x, y, config)
    meta = {"data": args.data, "T": config.T, "schedule": config.schedule, "sample_shape": list(x.shape[1:]),
            "num_classes": None if y is None else int(y.max()) + 1, "final_loss": sum(losses[-100:]) / len(losses[-100:]),
            "command": "python -m diffusion_lab " + " ".join(shlex.quote(a) for a in args.argv)}
    save_checkpoint(args.out, model, meta)
    print(f"saved {args.out} (final loss {meta['final_loss']:.4f})")
    return 0


def cmd_sample(args) -> int:
    model, meta = load_checkpoint(args.ckpt)
    schedule = make_schedule(meta.get("schedule", "linear"), meta.get("T", 1000))
    shape = (args.n, *meta["sample_shape"])
    g = torch.Generator().manual_seed(args.seed)
    cond = None
    if args.label is not None:
        if not meta.get("num_classes"):
            raise ValueError(f"--label needs a class-conditional checkpoint (trained with --conditional), got {args.ckpt}")
        cond = torch.full((args.n,), args.label, dtype=torch.long)
        model = cfg(model, args.guidance)
    if args.sampler == "ddpm":
        x = ddpm_sample(model, schedule, shape, cond=cond, generator=g, progress=not args.no_progress,
                        clip_x0=1.0 if len(shape) == 4 else None)
    else:
        x = ddim_sample(model, schedule, shape, steps=args.steps, eta=args.eta, cond=cond, generator=g,
                        progress=not args.no_progress, clip_x0=1.0 if len(shape) == 4 else None)
    _save_png(x, args.out)
    print(f"wrote {args.n} samples to {args.out}")
    return 0


def _save_png(x: torch.Tensor, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x.ndim == 2:
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5)
        ax.set_aspect("equal")
    else:
        n = x.shape[0]
        cols = min(n, 16)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.6, rows * 0.6), squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i < n:
                ax.imshow(x[i, 0].clamp(-1, 1), cmap="gray_r", vmin=-1, vmax=1)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m diffusion_lab", description="Train and sample small diffusion models.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a DDPM and save a checkpoint")
    t.add_argument("--data", choices=TOYS + ("digits",), required=True)
    t.add_argument("--conditional", action="store_true", help="class-conditional with label dropout (for CFG)")
    t.add_argument("--n", type=int, default=20000, help="number of toy samples")
    t.add_argument("--steps", type=int, default=None, help="optimizer steps (default: TrainConfig.steps)")
    t.add_argument("--batch-size", type=int, default=512)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--T", type=int, default=1000)
    t.add_argument("--schedule", choices=("linear", "cosine"), default="linear")
    t.add_argument("--width", type=int, default=None, help="MLP hidden size or U-Net base channels")
    t.add_argument("--depth", type=int, default=None, help="MLP residual blocks")
    t.add_argument("--arch", choices=("auto", "mlp", "unet"), default="auto",
                   help="for images: U-Net (auto) or an MLP over the flattened pixels")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)
    s = sub.add_parser("sample", help="sample a checkpoint and write a PNG")
    s.add_argument("--ckpt", required=True)
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddim")
    s.add_argument("--steps", type=int, default=50, help="DDIM steps")
    s.add_argument("--eta", type=float, default=0.0)
    s.add_argument("--label", type=int, default=None, help="class to generate (conditional checkpoints)")
    s.add_argument("--guidance", type=float, default=1.0, help="CFG scale (1 = plain conditional)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="samples.png")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_sample)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
