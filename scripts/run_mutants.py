"""Mutation testing of the core modules with mutmut 3 (`make mutants`; see CONTRIBUTING.md).

    python scripts/run_mutants.py --modules "ddpm ddim" --tests "tests/test_lib_ddpm.py ..." [--max-children N]

mutmut copies the package into mutants/, plants one mutation at a time and runs, for each
mutant, only the selected tests that call the mutated function (it records which tests call
what in a first, traced run). Two settings are made here rather than in pyproject.toml so that
the Makefile's module list is the only list:

* only the named modules are mutated (diffusion_lab/<module>.py);
* functions decorated with @torch.no_grad() are mutated too. mutmut skips every decorated
  function (a decorator may have side effects when the function is copied), which would leave
  out every sampler and the ELBO; torch.no_grad() has none, and the copies keep it.
"""
from __future__ import annotations

import argparse
import collections
import json
import shutil
import sys
from pathlib import Path

import libcst as cst
import mutmut.configuration as configuration
from mutmut.__main__ import cli
from mutmut.mutation import file_mutation
from mutmut.stats import status_by_exit_code


def _is_no_grad(decorator: cst.Decorator) -> bool:
    d = decorator.decorator
    return (isinstance(d, cst.Call) and not d.args and isinstance(d.func, cst.Attribute)
            and isinstance(d.func.value, cst.Name) and d.func.value.value == "torch" and d.func.attr.value == "no_grad")


def _allow_no_grad():
    visitor = next(c for c in vars(file_mutation).values()
                   if isinstance(c, type) and hasattr(c, "_skip_node_and_children"))
    original = visitor._skip_node_and_children

    def skip(self, node):
        if isinstance(node, cst.FunctionDef) and node.decorators and all(map(_is_no_grad, node.decorators)):
            return False
        return original(self, node)
    visitor._skip_node_and_children = skip


def _overlay_config(only_mutate: list[str], tests: list[str]):
    reader = configuration._config_reader

    def patched():
        read = reader()
        overlay = {"only_mutate": only_mutate, "pytest_add_cli_args_test_selection": tests}
        return lambda key, default: overlay[key] if key in overlay else read(key, default)
    configuration._config_reader = patched
    configuration.reset_config()    # mutmut may have read its configuration on import


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modules", required=True, help="space-separated module names in diffusion_lab/")
    ap.add_argument("--tests", required=True, help="space-separated test files to select from")
    ap.add_argument("--max-children", default="2")
    args = ap.parse_args()
    modules = args.modules.split()
    # Start clean: mutmut treats a file already copied into mutants/ by an earlier run with other
    # modules as "unmodified" and would not mutate it.
    shutil.rmtree("mutants", ignore_errors=True)
    _allow_no_grad()
    _overlay_config([f"diffusion_lab/{m}.py" for m in modules], args.tests.split())
    sys.argv = ["mutmut", "run", "--max-children", args.max_children, *[f"diffusion_lab.{m}.*" for m in modules]]
    try:
        cli()
    except SystemExit as e:
        if e.code:
            raise
    summary(modules)


def summary(modules):
    """Print killed / total per module (the figure recorded in CONTRIBUTING.md) and the survivors."""
    print("\nmodule        killed / total   (other outcomes)")
    for m in modules:
        meta = Path("mutants/diffusion_lab") / f"{m}.py.meta"
        codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
        status = collections.Counter(status_by_exit_code[c] for c in codes.values())
        other = ", ".join(f"{k} {v}" for k, v in sorted(status.items()) if k != "killed")
        print(f"{m:12s}  {status['killed']:6d} / {len(codes):<6d}   {other}")


if __name__ == "__main__":
    main()
