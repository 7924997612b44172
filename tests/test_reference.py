"""The library reference (book/reference/) covers the public API, and the book links what it uses.

Fast and build-free: it parses the reference pages and the notebooks. It fails, naming the offenders,
1. when a public name of diffusion_lab has no entry: its defining module has no ``{dl-module}`` block
   on a reference page (the block documents every public name the module defines, by introspection);
2. when a public function or class lacks a NumPy-style docstring (Parameters / Returns sections);
3. when a chapter calls a public ``dl.`` name that no page of the book outside the reference links
   with a ``{py:func}`` (``{py:class}``, ...) role, or links a name the library does not have;
4. when a reference page does not link back to the chapter that derives it.
The site build (``-W -n``) then checks that every link resolves and every docstring renders.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import re
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
REF = BOOK / "reference"

_spec = importlib.util.spec_from_file_location("dl_reference", REF / "_ext" / "dl_reference.py")
dl_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dl_reference)

DL_MODULE = re.compile(r"^```\{dl-module\}\s+(\S+)\s*$", re.M)
ROLE = re.compile(r"\{py:(?:func|class|obj|data|meth|mod|attr|exc)\}`([^`]+)`")
DL_USE = re.compile(r"\bdl\.([A-Za-z_]\w*)")


def documented_modules() -> dict[str, str]:
    """{module: page} for every {dl-module} block of the reference pages."""
    out = {}
    for page in sorted(REF.glob("*.md")):
        for mod in DL_MODULE.findall(page.read_text(encoding="utf-8")):
            out[mod] = page.name
    return out


def public_api() -> dict[str, object]:
    return dl_reference.public_names()


def missing_entries(public: dict[str, object], modules: dict[str, str]) -> list[str]:
    out = []
    for name, obj in sorted(public.items()):
        home = dl_reference.home_module(name, obj)
        if home not in modules:
            out.append(f"{name} (defined in {home})")
    return out


def test_every_public_name_has_a_reference_entry():
    modules = documented_modules()
    missing = missing_entries(public_api(), modules)
    assert not missing, ("public names without a reference entry; add a ```{dl-module} <module>``` block to the "
                         "reference page of its idea (book/reference/*.md): " + ", ".join(missing))
    for mod in modules:  # a block naming a module that does not exist would fail only at build time
        importlib.import_module(mod)


def test_coverage_check_names_the_offender():
    """The check above, on a page set that lacks one module, reports exactly that module's names."""
    modules = {m: p for m, p in documented_modules().items() if m != "diffusion_lab.ddim"}
    missing = missing_entries(public_api(), modules)
    assert missing and all("(defined in diffusion_lab.ddim)" in m for m in missing)
    assert "ddim_step (defined in diffusion_lab.ddim)" in missing


def _numpy_sections(doc: str) -> set[str]:
    return set(re.findall(r"^(\w[\w ]*)\n-{3,}\s*$", doc, re.M))


def docstring_problems(public: dict[str, object]) -> list[str]:
    out = []
    for name, obj in sorted(public.items()):
        if isinstance(obj, types.ModuleType) or not callable(obj):
            continue
        doc = inspect.getdoc(obj) or ""
        sections = _numpy_sections(doc)
        try:
            params = [p for p in inspect.signature(obj).parameters.values() if p.name not in ("self", "cls")]
        except (TypeError, ValueError):
            params = []
        need = set()
        if params:
            need.add("Parameters")
        if inspect.isfunction(obj):
            need.add("Returns")
        raises = re.search(r"^Raises\n-+\n(.*?)(?:^\w[\w ]*\n-{3,}|\Z)", doc, re.S | re.M)
        if raises and re.search(r"^\w+,", raises.group(1), re.M):
            out.append(f"{name}: 'A, B' in Raises (napoleon keeps only A: one entry per exception)")
        if not doc.strip():
            out.append(f"{name}: no docstring")
        elif need - sections:
            out.append(f"{name}: no {', '.join(sorted(need - sections))} section")
    return out


def test_public_docstrings_are_numpy_style():
    problems = docstring_problems(public_api())
    assert not problems, "public docstrings without NumPy-style sections: " + "; ".join(problems)


TEX = re.compile(r"\$|\\[A-Za-z]+|\\[()\[\]{}]|[\^_]\{")   # what the browser test reports as raw TeX
MATH_ESCAPED_UNDERSCORE = re.compile(r":math:`[^`]*\\_[^`]*`")   # MathJax shows \_ in \text{} as a backslash


def raw_tex(doc: str) -> list[str]:
    """TeX outside ``.. math::`` blocks, :math: roles and literals: the site would show it raw."""
    doc = re.sub(r"^(\s*)\.\. math::.*?(?=^\1\S|\Z)", "", doc, flags=re.S | re.M)
    for pattern in (r":math:`[^`]*`", r"``[^`]*``", r"`[^`]*`"):
        doc = re.sub(pattern, "", doc)
    return [doc[max(0, m.start() - 30):m.end() + 20].replace("\n", " ") for m in TEX.finditer(doc)]


def documented_docstrings():
    """(name, docstring) of every documented module, and of the functions, classes, methods and
    properties the reference shows from it."""
    for mod_name in documented_modules():
        mod = importlib.import_module(mod_name)
        yield mod_name, inspect.getdoc(mod) or ""
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != mod_name:
                continue
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            yield f"{mod_name}.{name}", inspect.getdoc(obj) or ""
            if inspect.isclass(obj):
                for k, v in vars(obj).items():
                    if not k.startswith("_") and (inspect.isfunction(v) or isinstance(v, property)):
                        yield f"{mod_name}.{name}.{k}", inspect.getdoc(v) or ""


def test_docstrings_have_maths_only_in_math_roles():
    bad = [f"{name}: {hit!r}" for name, doc in documented_docstrings() for hit in raw_tex(doc)]
    bad += [f"{name}: {m.group(0)!r}" for name, doc in documented_docstrings()
            for m in MATH_ESCAPED_UNDERSCORE.finditer(doc)]
    assert not bad, "TeX outside :math: in docstrings (the site shows it raw; use :math:`...`):\n" + "\n".join(bad)


def test_raw_tex_check_catches_a_plant():
    """TeX in prose is reported (once per occurrence); TeX in :math:, in literals and in a math block is not."""
    assert len(raw_tex(r"L = sum_{t} L_t and :math:`\sum_{t} L_t` and ``x_{t}``")) == 1
    assert len(raw_tex("an unrendered \\alpha and a $")) == 2
    assert raw_tex("the ELBO:\n\n.. math::\n\n   \\log p \\ge L\n\nthen text") == []


def _cells(path: Path):
    """(kind, source) of every cell of a notebook, or one Markdown 'cell' for a .md page."""
    if path.suffix == ".md":
        return [("markdown", path.read_text(encoding="utf-8"))]
    nb = json.loads(path.read_text(encoding="utf-8"))
    return [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]


def _target(role_text: str) -> str:
    m = re.search(r"<([^>]+)>\s*$", role_text)
    target = (m.group(1) if m else role_text).strip().lstrip("~!")
    if target.startswith("dl."):
        target = "diffusion_lab." + target[3:]
    return target


def book_pages() -> list[Path]:
    """The book's pages outside the reference part: chapters, appendices, index."""
    return sorted(p for p in list(BOOK.glob("*.ipynb")) + list(BOOK.glob("*.md")))


def links_and_uses(pages, public):
    linked, used, bad = set(), {}, []
    for page in pages:
        for kind, src in _cells(page):
            if kind == "markdown":
                for role in ROLE.findall(src):
                    target = _target(role)
                    if not target.startswith("diffusion_lab"):
                        continue
                    parts = target.split(".")
                    if len(parts) >= 2 and parts[1] in public:
                        linked.add(parts[1])
                    elif len(parts) >= 2 and importlib.util.find_spec(".".join(parts[:2])) is None:
                        bad.append(f"{page.name}: {role}")
            elif kind == "code":
                for name in DL_USE.findall(src):
                    if name in public and not isinstance(public[name], types.ModuleType):
                        used.setdefault(name, page.name)
    return linked, used, bad


def unlinked(pages, public) -> list[str]:
    linked, used, _ = links_and_uses(pages, public)
    return [f"dl.{n} (called in {p})" for n, p in sorted(used.items()) if n not in linked]


def test_every_called_public_name_is_linked_somewhere_in_the_book():
    public = public_api()
    missing = unlinked(book_pages(), public)
    assert not missing, ("public names the chapters call but no page links; link each where the chapter "
                         "switches to the library, e.g. {py:func}`dl.ddpm_sample`: " + ", ".join(missing))
    _, _, bad = links_and_uses(book_pages(), public)
    assert not bad, "links to names the library does not have: " + ", ".join(bad)


def test_link_check_names_the_offender(tmp_path):
    """Drop the links to dl.ddim_step from chapter 8: the check must name dl.ddim_step."""
    public = public_api()
    pages = []
    for page in book_pages():
        if page.name == "08_ddim.ipynb":
            nb = json.loads(page.read_text(encoding="utf-8"))
            for cell in nb["cells"]:
                if cell["cell_type"] == "markdown":
                    src = "".join(cell["source"])
                    cell["source"] = ROLE.sub(lambda m: "" if _target(m.group(1)).endswith(".ddim_step") else m.group(0), src)
            page = tmp_path / page.name
            page.write_text(json.dumps(nb), encoding="utf-8")
        pages.append(page)
    if "ddim_step" not in links_and_uses(book_pages(), public)[0]:
        pytest.skip("chapter 8 does not link dl.ddim_step (the test above reports it)")
    linked_elsewhere = {p.name for p in book_pages() if p.name != "08_ddim.ipynb"
                        and "ddim_step" in links_and_uses([p], public)[0]}
    missing = unlinked(pages, public)
    if linked_elsewhere:
        assert not any(m.startswith("dl.ddim_step ") for m in missing)
    else:
        assert any(m.startswith("dl.ddim_step ") for m in missing), missing


CHAPTER_LINK = re.compile(r"\]\(\.\./[^)]+\.(?:ipynb|md)(?:#[^)]*)?\)|\{doc\}`[^`]*\.\./")


def test_reference_pages_link_back_to_the_chapters():
    pages = [p for p in sorted(REF.glob("*.md")) if p.name != "index.md"]
    assert pages
    orphans = [p.name for p in pages if not CHAPTER_LINK.search(p.read_text(encoding="utf-8"))]
    assert not orphans, "reference pages that link no chapter section: " + ", ".join(orphans)


def test_reference_pages_are_in_the_toc():
    toc = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\s*-?\s*file:\s*book/reference/(\w+)", toc, re.M))
    pages = {p.stem for p in REF.glob("*.md")}
    assert pages - listed == set(), f"reference pages missing from _toc.yml: {sorted(pages - listed)}"
