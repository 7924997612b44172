"""The website builds from scratch with zero warnings (the build itself is the `built_site`
fixture in conftest.py: jupyter-book build . --all -W -n --keep-going)."""
import re


def test_site_builds_without_warnings(built_site):
    warnings = [line for line in built_site.log.splitlines() if re.search(r"\bWARNING\b|\bERROR\b", line)]
    assert built_site.returncode == 0, f"jupyter-book build failed:\n{built_site.log[-5000:]}"
    assert not warnings, "build warnings:\n" + "\n".join(warnings)
    assert (built_site.html_dir / "index.html").is_file()
    print(f"site built in {built_site.seconds:.1f} s")
