"""Sphinx glue for the library reference (book/reference/*.md).

One directive, ``dl-module``: ``{dl-module} diffusion_lab.ddpm`` in a reference page documents
that module (its docstring, a summary table, then every public name of ``diffusion_lab`` it
defines, with autodoc). The names are found by introspection, so a new function exported from
``diffusion_lab/__init__.py`` appears on its module's page by itself, and a new module needs one
``dl-module`` block on the page of its idea. Entries are documented under the name a reader
types, ``diffusion_lab.ddpm_sample`` (``dl.ddpm_sample``), not under the defining module.

A ``missing-reference`` handler lets the book write ``{py:func}`dl.ddpm_sample``` and maps the
defining-module names that autodoc writes for type annotations
(``diffusion_lab.schedules.Schedule``) to the documented ``diffusion_lab.Schedule``.

``public_names()`` and ``home_module()`` are also what tests/test_reference.py checks with.
"""
from __future__ import annotations

import importlib
import inspect
import re
import types

PACKAGE = "diffusion_lab"


def public_names(package=None) -> dict[str, object]:
    """The public API: every attribute of the package that does not start with ``_``, except
    the submodules imported as a side effect (``dl.ddpm``); a module exported on purpose
    (``from . import data``) is listed in ``MODULE_EXPORTS``."""
    pkg = package or importlib.import_module(PACKAGE)
    out = {}
    for name in dir(pkg):
        obj = getattr(pkg, name)
        if name.startswith("_") or (isinstance(obj, types.ModuleType) and name not in MODULE_EXPORTS):
            continue
        out[name] = obj
    return out


MODULE_EXPORTS = ("data",)


def home_module(name: str, obj) -> str:
    """The module that defines a public name: ``obj.__module__`` for functions and classes; for
    a constant, the module of the package whose source assigns it at top level."""
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    mod = getattr(obj, "__module__", None)
    if isinstance(mod, str) and mod.startswith(PACKAGE) and (inspect.isfunction(obj) or inspect.isclass(obj)):
        return mod
    pkg = importlib.import_module(PACKAGE)
    for attr in dir(pkg):
        sub = getattr(pkg, attr)
        if isinstance(sub, types.ModuleType) and getattr(sub, name, None) is obj:
            try:
                src = inspect.getsource(sub)
            except (OSError, TypeError):
                continue
            if re.search(rf"^{re.escape(name)}\s*(:[^=]*)?=", src, re.M):
                return sub.__name__
    raise LookupError(f"cannot tell which module of {PACKAGE} defines {name!r}")


def names_of_module(module: str) -> list[str]:
    """The public names of the package defined in ``module``, in source order."""
    names = [n for n, o in public_names().items()
             if not isinstance(o, types.ModuleType) and home_module(n, o) == module]
    src = inspect.getsource(importlib.import_module(module))

    def position(n):
        m = re.search(rf"^(class |def )?{re.escape(n)}\b", src, re.M)
        return m.start() if m else len(src)
    return sorted(names, key=position)


def own_names(module: str) -> list[str]:
    """The public functions and classes a module defines itself, in source order: what the reference
    shows of a module the package does not re-export (``diffusion_lab.widgets``, ``.plotting``), which
    chapters import from the module directly."""
    mod = importlib.import_module(module)
    found = [(inspect.getsourcelines(o)[1], n) for n, o in vars(mod).items()
             if not n.startswith("_") and (inspect.isfunction(o) or inspect.isclass(o)) and o.__module__ == module]
    return [n for _, n in sorted(found)]


def _rst_for(module: str) -> list[str]:
    names = names_of_module(module)
    current = PACKAGE
    if not names:                      # a module used directly, not re-exported: entries under its own name
        names, current = own_names(module), module
    lines = [f".. automodule:: {module}", "", f".. currentmodule:: {current}", ""]
    if names:
        lines += [".. autosummary::", "   :nosignatures:", ""] + [f"   {n}" for n in names] + [""]
    home = importlib.import_module(current)
    for n in names:
        obj = getattr(home, n)
        if inspect.isclass(obj):
            lines += [f".. autoclass:: {n}", "   :members:", ""]
        elif callable(obj):
            lines += [f".. autofunction:: {n}", ""]
        else:  # a constant: its documentation is the comment block (``#:``) above its assignment
            from sphinx.pycode import ModuleAnalyzer
            doc = ModuleAnalyzer.for_module(module).find_attr_docs().get(("", n), [])
            lines += [f".. py:data:: {n}", f"   :value: {obj!r}", ""] + [f"   {d}" for d in doc] + [""]
    return lines


def setup(app):
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective

    class DlModule(SphinxDirective):
        required_arguments = 1
        has_content = False

        def run(self):
            module = self.arguments[0]
            if not module.startswith(PACKAGE + "."):
                raise self.error(f"dl-module wants a module of {PACKAGE}, got {module!r}")
            source = self.get_source_info()
            content = StringList()
            # The reference pages are MyST Markdown: autodoc's output (reStructuredText, with the
            # docstrings in it) is parsed as reStructuredText through MyST's eval-rst directive.
            for line in ["```{eval-rst}"] + _rst_for(module) + ["```"]:
                content.append(line, *source)
            node = __import__("docutils.nodes", fromlist=["section"]).container()
            self.state.nested_parse(content, self.content_offset, node)
            return node.children

    def resolve(app, env, node, contnode):
        if node.get("refdomain") != "py":
            return None
        target = node.get("reftarget", "")
        new = None
        if target.startswith("dl."):
            new = PACKAGE + target[2:]
        else:
            m = re.fullmatch(rf"{PACKAGE}\.\w+\.(\w+)", target)
            if m and m.group(1) in public_names() and not isinstance(public_names()[m.group(1)], types.ModuleType):
                new = f"{PACKAGE}.{m.group(1)}"
        if new is None:
            return None
        node = node.deepcopy()
        node["reftarget"] = new
        return env.domains["py"].resolve_xref(env, node.get("refdoc", ""), app.builder, node["reftype"], new,
                                             node, contnode)

    # autosummary's table shows each docstring's first sentence, cut at ". "; the docstrings cite
    # "(Ho et al. 2020, Eq. 14)", so "Eq." and friends must not end a sentence (as "et al." does not).
    from sphinx.ext import autosummary
    extra = ("Eq.", "Eqs.", "Sec.", "Alg.", "Thm.", "Fig.", "App.")
    autosummary.WELL_KNOWN_ABBREVIATIONS = tuple(dict.fromkeys(autosummary.WELL_KNOWN_ABBREVIATIONS + extra))

    app.add_directive("dl-module", DlModule)
    app.connect("missing-reference", resolve)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
