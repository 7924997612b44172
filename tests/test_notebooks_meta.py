"""Every chapter follows the template (CONTRIBUTING.md): the title, then a Colab-only install
cell that installs exactly git+<repository.url from _config.yml>, then the setup cell; outputs
from a clean top-to-bottom run, with the widget state stored; listed in _toc.yml."""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import nbformat
import pytest
import yaml
from IPython.core.inputtransformer2 import TransformerManager

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
REPO_URL = CONFIG["repository"]["url"]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def toc_files(node) -> list[str]:
    """All `file:` entries of _toc.yml (root, parts, chapters, sections), in order."""
    out = []
    if isinstance(node, dict):
        if "file" in node:
            out.append(node["file"])
        if "root" in node:
            out.append(node["root"])
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key) or []:
                out += toc_files(child)
    return out


TOC = toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8")))


def test_config_has_the_repository_and_colab():
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", REPO_URL), REPO_URL
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert CONFIG["execute"]["execute_notebooks"] == "off"  # the site shows the outputs nbval validates


def test_there_is_at_least_one_chapter():
    assert NOTEBOOKS, "no notebooks in book/"


def test_toc_entries_exist_and_every_page_is_listed():
    for entry in TOC:
        matches = [p for p in (ROOT / f"{entry}.md", ROOT / f"{entry}.ipynb") if p.is_file()]
        assert len(matches) == 1, f"_toc.yml lists {entry!r}: expected exactly one of .md/.ipynb, found {matches}"
    pages = sorted((ROOT / "book").glob("*.ipynb")) + sorted((ROOT / "book").glob("*.md"))
    listed = {ROOT / e for e in TOC}
    unlisted = [p.name for p in pages if p.with_suffix("") not in listed]
    assert not unlisted, f"pages in book/ missing from _toc.yml (they would not be built): {unlisted}"


def read(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return nb


def run_install_cell(source: str, in_colab: bool) -> list[tuple[str, str]]:
    """Execute the install cell as IPython would; return the magics it called."""
    calls = []

    class FakeIPython:
        def run_line_magic(self, name, line):
            calls.append((name, line))

    python = TransformerManager().transform_cell(source)
    saved = sys.modules.get("google.colab")
    try:
        if in_colab:
            sys.modules["google.colab"] = types.ModuleType("google.colab")
        else:
            sys.modules.pop("google.colab", None)
        exec(compile(python, "<install cell>", "exec"), {"get_ipython": lambda: FakeIPython()})
    finally:
        if saved is not None:
            sys.modules["google.colab"] = saved
        else:
            sys.modules.pop("google.colab", None)
    return calls


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
class TestChapterTemplate:
    def test_first_cell_is_the_title(self, path):
        # The page opens with its title (and the Chinese title), not with code.
        cell = read(path).cells[0]
        assert cell.cell_type == "markdown" and cell.source.startswith("# "), "cell 1 must start with the '# Title'"
        assert re.search(r"^\*[^*\n]*[\u4e00-\u9fff][^*\n]*\*\s*$", cell.source, flags=re.M), (
            "the title cell must give the Chinese title in italics on a line of its own")

    def test_second_cell_is_the_colab_install_cell(self, path):
        cell = read(path).cells[1]
        assert cell.cell_type == "code", "cell 2 must be the Colab install cell"
        pip_lines = [ln.strip() for ln in cell.source.splitlines() if "pip" in ln]
        assert pip_lines == [f'%pip install -q "diffusion-lab @ git+{REPO_URL}"'], (
            f"the install cell must install exactly git+{REPO_URL} (repository.url in _config.yml), got {pip_lines}")
        assert 'if "google.colab" in sys.modules:' in cell.source
        assert "remove-cell" in cell.metadata.get("tags", []), "tag the install cell remove-cell"
        assert not cell.get("outputs"), "the install cell must not produce output outside Colab"

    def test_install_cell_only_acts_in_colab(self, path):
        source = read(path).cells[1].source
        assert run_install_cell(source, in_colab=False) == []
        assert run_install_cell(source, in_colab=True) == [("pip", f'install -q "diffusion-lab @ git+{REPO_URL}"')]

    def test_third_cell_is_the_setup_cell(self, path):
        cell = read(path).cells[2]
        assert cell.cell_type == "code", "cell 3 must be the setup cell"
        assert "hide-input" in cell.metadata.get("tags", []), (
            "tag the setup cell hide-input: the site shows it folded under the title, with a 'show code' toggle")
        for needle in ("import torch", "import diffusion_lab as dl", "torch.manual_seed(", "device = dl.get_device()",
                       "torch.set_num_threads(1)", "set_style()"):
            assert needle in cell.source, f"the setup cell must contain {needle!r}"

    def test_outputs_come_from_one_clean_top_to_bottom_run(self, path):
        code = [c for c in read(path).cells if c.cell_type == "code"]
        counts = [c.execution_count for c in code]
        assert counts == list(range(1, len(code) + 1)), (
            f"execution counts {counts}: regenerate with `python scripts/run_notebook.py {path.relative_to(ROOT)}`")
        errors = [o for c in code for o in c.outputs if o.output_type == "error"]
        assert not errors, "stored outputs contain an error"

    def test_widget_state_is_stored_for_every_widget(self, path):
        nb = read(path)
        views = [o.data[WIDGET_VIEW]["model_id"] for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs if WIDGET_VIEW in o.get("data", {})]
        if not views:
            pytest.skip("no widgets in this chapter")
        state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
        missing = [m for m in views if m not in state]
        assert not missing, "widget views without stored state (run scripts/run_notebook.py): " + ", ".join(missing)

    def test_ignored_outputs_say_why(self, path):
        for cell in read(path).cells:
            if "nbval-ignore-output" in cell.metadata.get("tags", []):
                assert re.search(r"^# nbval-ignore-output: \S.*", cell.source, flags=re.M), (
                    f"a cell tagged nbval-ignore-output must start with '# nbval-ignore-output: <why>':\n{cell.source[:200]}")
