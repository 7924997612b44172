"""The website builds from scratch with zero warnings (the build itself is the `built_site`
fixture in conftest.py: jupyter-book build . --all -W -n --keep-going), every chapter
page has its "Open in Colab" launch button and a download link for the notebook, every
page loads the CJK font stack, and every setting of _config.yml reaches Sphinx (Jupyter
Book 1.x drops some keys silently).

With DIFFUSION_LAB_SITE=existing nothing is built: the zero-warnings test is skipped, with
the reason, and the run ends with a line saying so (conftest.py)."""
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


def test_site_builds_without_warnings(built_site):
    if not built_site.built:
        pytest.skip("DIFFUSION_LAB_SITE=existing: the site was not built in this run, so its build "
                    "warnings were not checked (unset the variable, or run `make book`)")
    warnings = [line for line in built_site.log.splitlines() if re.search(r"\bWARNING\b|\bERROR\b", line)]
    assert built_site.returncode == 0, f"jupyter-book build failed:\n{built_site.log[-5000:]}"
    assert not warnings, "build warnings:\n" + "\n".join(warnings)
    assert (built_site.html_dir / "index.html").is_file()
    print(f"site built in {built_site.seconds:.1f} s")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_chapter_has_colab_and_download_buttons(built_site, notebook):
    html_file = built_site.html_dir / "book" / f"{notebook.stem}.html"
    if not html_file.is_file():
        pytest.skip(f"{notebook.name} is not in _toc.yml (test_notebooks_meta.py reports that)")
    html = html_file.read_text(encoding="utf-8")
    repo = urlparse(CONFIG["repository"]["url"]).path.strip("/")
    colab = (f"{CONFIG['launch_buttons']['colab_url']}/github/{repo}/blob/"
             f"{CONFIG['repository']['branch']}/book/{notebook.name}")
    assert f'href="{colab}"' in html, f"no Colab launch button linking to {colab}"
    assert f'href="../_sources/book/{notebook.name}"' in html, "no download button for the .ipynb"


def test_every_page_loads_the_cjk_font_stack(built_site):
    pages = sorted(built_site.html_dir.glob("book/*.html"))
    assert pages, f"no pages under {built_site.html_dir / 'book'}"
    missing = [p.name for p in pages if "_static/cjk.css" not in p.read_text(encoding="utf-8")]
    assert not missing, f"pages without _static/cjk.css: {missing}"


def sphinx_conf(tmp_path) -> dict:
    """The Sphinx configuration Jupyter Book derives from _config.yml (`jupyter-book config
    sphinx`, run on a copy so that no conf.py lands in the repository)."""
    for name in ("_config.yml", "_toc.yml"):
        (tmp_path / name).write_text((ROOT / name).read_text(encoding="utf-8"), encoding="utf-8")
    jb = Path(sys.executable).with_name("jupyter-book")
    subprocess.run([str(jb), "config", "sphinx", str(tmp_path)], check=True, capture_output=True, text=True)
    conf: dict = {}
    exec((tmp_path / "conf.py").read_text(encoding="utf-8"), conf)
    return conf


def test_every_config_setting_reaches_sphinx(tmp_path):
    """A key that Jupyter Book does not forward is silently ignored (it happened to
    `parse: myst_dmath_double_inline`): every key under `parse:` and `sphinx: config:` must
    come out in the Sphinx configuration with its value."""
    conf = sphinx_conf(tmp_path)
    expected = {**CONFIG.get("parse", {}), **CONFIG["sphinx"]["config"]}
    dropped = sorted(k for k in expected if k not in conf)
    assert not dropped, f"_config.yml settings that never reach Sphinx: {dropped}"
    for key in ("myst_enable_extensions", "math_numfig", "mathjax_path", "nitpicky"):
        assert conf[key] == expected[key], key
    theme = conf["html_theme_options"]
    for key, value in CONFIG["sphinx"]["config"]["html_theme_options"].items():
        assert theme.get(key) == value, f"html_theme_options.{key}: {theme.get(key)!r}, _config.yml says {value!r}"
