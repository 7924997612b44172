"""The package as a user installs it: build the wheel, install it (not editable) into a
fresh virtual environment, and from a directory outside the repository load a pretrained
checkpoint and sample a few steps. This is what fails when the package data (the .pt
checkpoints) or a module is left out of the wheel, which an editable install hides.

No network: the wheel is built without build isolation (setuptools from this environment),
and the fresh environment sees this environment's site-packages (torch, numpy, ...) through
a .pth file instead of installing them again. Its own site-packages comes first on sys.path,
and a path listed in a .pth file is not processed for .pth files of its own, so the
editable install of diffusion_lab in .venv is not found: the test checks that the module
imported is the one inside the fresh environment.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SAMPLE = r"""
import json, sys
import torch
import diffusion_lab as dl
model, meta = dl.load_pretrained("digits_ddpm")
schedule = dl.make_schedule(meta["schedule"], meta["T"])
x = dl.ddim_sample(model, schedule, (4, *meta["sample_shape"]), steps=5,
                   generator=torch.Generator().manual_seed(0))
print(json.dumps({"file": dl.__file__, "shape": list(x.shape), "finite": bool(torch.isfinite(x).all()),
                  "std": float(x.std())}))
"""


def run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_wheel_installs_and_loads_a_pretrained_checkpoint(tmp_path):
    # 1. the wheel, built from a copy of the sources (no build/ or .egg-info in the repository)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "diffusion_lab", src / "diffusion_lab", ignore=shutil.ignore_patterns("__pycache__"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(src)])
    wheels = list((tmp_path / "dist").glob("diffusion_lab-*.whl"))
    assert len(wheels) == 1, wheels
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    shipped = {f"diffusion_lab/checkpoints/{p.name}" for p in (ROOT / "diffusion_lab" / "checkpoints").glob("*.pt")}
    assert shipped and shipped <= names, f"checkpoints missing from the wheel: {sorted(shipped - names)}"
    modules = {f"diffusion_lab/{p.name}" for p in (ROOT / "diffusion_lab").glob("*.py")}
    assert modules <= names, f"modules missing from the wheel: {sorted(modules - names)}"

    # 2. a fresh environment that reuses this one's dependencies, and the wheel installed in it
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    site = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "_shared_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheels[0])])
    assert (venv / "bin" / "diffusion-lab").is_file(), "the console script was not installed"

    # 3. outside the repository, with nothing pointing back at it
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = json.loads(run([str(py), "-c", SAMPLE], cwd=work, env=env).stdout.strip().splitlines()[-1])
    assert Path(out["file"]).resolve().is_relative_to(venv.resolve()), (
        f"imported {out['file']}, not the installed wheel in {venv}")
    assert out["shape"] == [4, 1, 8, 8] and out["finite"], out
    assert 0.1 < out["std"] < 10, out  # pixels in about [-1, 1]: not all zeros, not diverged
    help_text = run([str(venv / "bin" / "diffusion-lab"), "--help"], cwd=work, env=env).stdout
    assert "sample" in help_text, help_text
