"""Repository-wide pytest settings for the book: nbval defaults and the built website.

* Notebooks (`pytest --nbval book/...`) always run in this environment's kernel and are
  compared with tests/nbval_sanitize.cfg applied, without extra command-line flags.
* `built_site` builds the website once per session (fresh, warnings as errors) for
  tests/test_site_build.py and tests/test_browser.py. Set DIFFUSION_LAB_SITE=existing to
  reuse an existing _build/html instead (handy while working on the browser test): then
  nothing was built, so the zero-warnings test is skipped and the run ends with a line
  saying so.
* The report header names the CPU-kernel variables the notebook kernels inherit (`make
  test` runs nbval under baseline kernels; see the Makefile's NB_CPU_ENV).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
HTML_DIR = ROOT / "_build" / "html"
BUILD_CMD = ["build", ".", "--all", "-W", "-n", "--keep-going"]  # same flags as `make book`
CPU_ENV_VARS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA",
                "DNNL_MAX_CPU_ISA", "OPENBLAS_CORETYPE")
REUSED_SITE = []  # set when built_site reused an existing build (reported at the end)


def pytest_configure(config):
    opt = config.option
    if getattr(opt, "nbval_sanitize_with", None) is None:
        opt.nbval_sanitize_with = str(ROOT / "tests" / "nbval_sanitize.cfg")
    if hasattr(opt, "nbval_current_env") and not getattr(opt, "nbval_kernel_name", None):
        opt.nbval_current_env = True


def pytest_report_header(config):
    cpu = [f"{k}={os.environ[k]}" for k in CPU_ENV_VARS if k in os.environ]
    return f"CPU kernels: {' '.join(cpu) if cpu else 'native (no ATEN/MKL/oneDNN/OpenBLAS override)'}"


def pytest_terminal_summary(terminalreporter):
    if REUSED_SITE:
        terminalreporter.write_line(
            f"DIFFUSION_LAB_SITE=existing: the site was NOT built in this run; the tests used the existing "
            f"{REUSED_SITE[0]} and did not check the build for warnings.", yellow=True, bold=True)


class SiteBuild:
    def __init__(self, returncode: int, log: str, seconds: float, html_dir: Path, built: bool = True):
        self.returncode, self.log, self.seconds, self.html_dir = returncode, log, seconds, html_dir
        self.built = built  # False: an existing build was reused, its log is unknown


@pytest.fixture(scope="session")
def built_site() -> SiteBuild:
    if os.environ.get("DIFFUSION_LAB_SITE") == "existing":
        if not (HTML_DIR / "index.html").is_file():
            pytest.fail(f"DIFFUSION_LAB_SITE=existing but {HTML_DIR / 'index.html'} does not exist; run `make book`")
        REUSED_SITE.append(HTML_DIR)
        return SiteBuild(0, "(reused existing build: no log)", 0.0, HTML_DIR, built=False)
    jb = Path(sys.executable).with_name("jupyter-book")
    start = time.perf_counter()
    proc = subprocess.run([str(jb), *BUILD_CMD], cwd=ROOT, capture_output=True, text=True)
    return SiteBuild(proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start, HTML_DIR)


LAST = ("test_site_build.py", "test_browser.py")


def pytest_collection_modifyitems(session, config, items):
    """Run the site build and the browser test last: after nbval has validated the
    stored outputs that the site shows. (The sort is stable; other tests keep their order.)"""
    items.sort(key=lambda item: LAST.index(item.path.name) + 1 if item.path.name in LAST else 0)
