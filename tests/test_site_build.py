"""The website builds from scratch with zero warnings (the build itself is the `built_site`
fixture in conftest.py: jupyter-book build . --all -W -n --keep-going), and every chapter
page has its "Open in Colab" launch button and a download link for the notebook."""
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


def test_site_builds_without_warnings(built_site):
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
