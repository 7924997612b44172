#!/usr/bin/env python
"""Regenerate a chapter's stored outputs: run the notebook top to bottom in a fresh
kernel, in place, saving the widget state (so the website can embed the widgets).

    python scripts/run_notebook.py book/02_information_theory.ipynb [more.ipynb ...]

Fails (exit 1) on the first cell error, leaving that notebook file untouched, and
also when the kernel used more than --max-seconds of CPU time (the book's budget is
a minute per chapter on a 2-core CPU). CPU time rather than wall time, because on a
shared machine the wall time mostly measures the other users; both are printed.
Run it from the repository's virtual environment (`make notebooks` does); the kernel
is that environment's `python3`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
import psutil
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def kernel_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the kernel process and its children so far."""
    proc = psutil.Process(pid)
    times = [proc.cpu_times()] + [c.cpu_times() for c in proc.children(recursive=True)]
    return sum(t.user + t.system for t in times)


def run(path: Path, timeout: int) -> tuple[float, float, int]:
    """Execute `path` in place; return (wall seconds, kernel CPU seconds, file size)."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata.pop("widgets", None)
    cpu = {}  # the kernel's pid, then its CPU time after each cell

    def remember_pid(**_):
        cpu["pid"] = client.km.provisioner.process.pid

    def measure(**_):
        cpu["seconds"] = kernel_cpu_seconds(cpu["pid"])

    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        store_widget_state=True,   # -> nb.metadata.widgets, embedded by myst-nb
        record_timing=False,       # no timestamps in cell metadata (clean git diffs)
        allow_errors=False,
        resources={"metadata": {"path": str(path.parent)}},  # cwd = the notebook's folder
        on_notebook_start=remember_pid,
        on_cell_executed=measure,
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return seconds, cpu.get("seconds", float("nan")), path.stat().st_size


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--timeout", type=int, default=300, help="seconds allowed per cell (default 300)")
    ap.add_argument("--max-seconds", type=float, default=60.0,
                    help="fail if the kernel uses more CPU seconds than this (default 60)")
    args = ap.parse_args(argv)
    status = 0
    for path in args.notebooks:
        if path.suffix != ".ipynb" or not path.is_file():
            print(f"error: {path} is not a notebook file", file=sys.stderr)
            return 1
        print(f"running {path} ...", flush=True)
        try:
            seconds, cpu, size = run(path, args.timeout)
        except CellExecutionError as err:
            print(f"error: {path} failed, file left unchanged:\n{err}", file=sys.stderr)
            return 1
        load = psutil.getloadavg()[0]
        print(f"  ok: {seconds:.1f} s wall, {cpu:.1f} s kernel CPU (load average {load:.1f}), "
              f"{size / 1e6:.2f} MB written", flush=True)
        if cpu > args.max_seconds:
            print(f"error: {path} used {cpu:.1f} s of CPU, over the {args.max_seconds:.0f} s budget",
                  file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
