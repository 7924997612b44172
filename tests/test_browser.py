"""The built website in a real browser (Debian's chromium driven by Playwright).

Every page in _toc.yml is opened from a local server and checked: it loads, every
equation is typeset by MathJax, every image is loaded, the console has no errors, and
on pages with widgets each slider changes the displayed image. The test machine is
offline, so requests for the CDN scripts the pages load (MathJax, require.js, the
widget manager) are answered from tests/browser/node_modules (`npm ci` installs them
from tests/browser/package-lock.json); any other request that leaves 127.0.0.1 fails
the test. Screenshots go to tests/browser/screenshots/ (git-ignored).

Run alone:  pytest tests/test_browser.py   (builds the site first), or, reusing an
existing build:  DIFFUSION_LAB_SITE=existing pytest tests/test_browser.py
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import json
import mimetypes
import re
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BROWSER_DIR = ROOT / "tests" / "browser"
NODE_MODULES = BROWSER_DIR / "node_modules"
SHOTS = BROWSER_DIR / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
CDN_PREFIX = "https://cdn.jsdelivr.net/npm/"

# Console messages of type "error" that are NOT failures. Keep this list short and say why.
CONSOLE_ALLOW = [
    # Chromium asks every site for /favicon.ico; the book has no favicon, the server answers 404.
    re.compile(r"Failed to load resource: .*404.*"),
]

playwright_sync = pytest.importorskip("playwright.sync_api")


def toc_pages() -> list[str]:
    """Page paths (without suffix) of every entry in _toc.yml, in reading order."""
    def walk(node):
        out = []
        if isinstance(node, dict):
            out += [node[k] for k in ("root", "file") if k in node]
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key) or []:
                    out += walk(child)
        return out
    return walk(yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8")))


PAGES = toc_pages()


# --------------------------------------------------------------------------- fixtures
class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(built_site):
    assert built_site.returncode == 0, f"the site did not build:\n{built_site.log[-3000:]}"
    handler = functools.partial(QuietHandler, directory=str(built_site.html_dir))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def local_cdn_file(url: str) -> Path:
    """Map https://cdn.jsdelivr.net/npm/<package>@<version>/<path> to node_modules/<package>/<path>.

    The installed package must have exactly the version in the URL, so _config.yml and
    tests/browser/package.json cannot drift apart unnoticed.
    """
    m = re.fullmatch(r"((?:@[^/@]+/)?[^/@]+)@([^/]+)/(.*)", url[len(CDN_PREFIX):].split("?")[0])
    if not m:
        raise LookupError(f"unversioned CDN URL {url}")
    package, version, rel = m.groups()
    pkg_dir = NODE_MODULES / package
    if not (pkg_dir / "package.json").is_file():
        raise LookupError(f"{package} is not in tests/browser/package.json (needed for {url})")
    installed = json.loads((pkg_dir / "package.json").read_text())["version"]
    if installed != version:
        raise LookupError(f"{url} asks for {package}@{version}, tests/browser has {installed}")
    path = (pkg_dir / rel).resolve()
    if not path.is_file() or pkg_dir.resolve() not in path.parents:
        raise LookupError(f"{url}: no file {rel} in {package}@{installed}")
    return path


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make test does this)")
    if not NODE_MODULES.is_dir():
        pytest.fail("tests/browser/node_modules is missing: run `npm ci` in tests/browser (make test does this)")
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class PageRecorder:
    """A page whose external requests are served from node_modules, recording all problems."""

    def __init__(self, browser, base: str):
        self.base = base
        self.console_errors: list[str] = []
        self.blocked: list[str] = []
        self.http_errors: list[str] = []
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda err: self.console_errors.append(f"page error: {err}"))
        self.page.on("response", self._response)

    def _route(self, route):
        url = route.request.url
        host = urlparse(url).hostname
        if host == "127.0.0.1" or url.startswith(("data:", "blob:")):
            return route.continue_()
        if url.startswith(CDN_PREFIX):
            try:
                path = local_cdn_file(url)
            except LookupError as err:
                self.blocked.append(str(err))
                return route.abort()
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            headers = {"Access-Control-Allow-Origin": "*"}
            return route.fulfill(status=200, body=path.read_bytes(), content_type=ctype, headers=headers)
        self.blocked.append(url)
        return route.abort()

    def _console(self, msg):
        if msg.type == "error" and not any(rx.search(msg.text) for rx in CONSOLE_ALLOW):
            self.console_errors.append(f"console: {msg.text} ({msg.location.get('url', '')})")

    def _response(self, response):
        if response.status >= 400 and not response.url.endswith("/favicon.ico"):
            self.http_errors.append(f"{response.status} {response.url}")

    def close(self):
        self.context.close()


# --------------------------------------------------------------------------- page checks (JavaScript)
JS_WAIT_MATHJAX = """async () => {
  if (!document.querySelector('.math')) return 'no math';
  for (let i = 0; i < 300 && !(window.MathJax && MathJax.startup && MathJax.startup.promise); i++)
    await new Promise(r => setTimeout(r, 100));
  if (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) return 'MathJax never started';
  await MathJax.startup.promise;
  return 'typeset';
}"""

JS_MATH_REPORT = """() => {
  const maths = [...document.querySelectorAll('.math')];
  const untypeset = maths.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 80));
  const clone = document.querySelector('main, .bd-main, body').cloneNode(true);
  clone.querySelectorAll('pre, code, script, style, mjx-container, textarea').forEach(e => e.remove());
  const text = clone.textContent;
  const raw = ['$$', '\\\\[', '\\\\(', '\\\\begin{'].filter(s => text.includes(s))
      .map(s => s + ' ... ' + text.slice(Math.max(0, text.indexOf(s) - 60), text.indexOf(s) + 60));
  return {count: maths.length, untypeset, raw};
}"""

JS_IMAGES = """async () => {
  const imgs = [...document.querySelectorAll('img')];
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
  return imgs.map(i => ({src: i.currentSrc.slice(0, 120), ok: i.complete && i.naturalWidth > 0}));
}"""

JS_SHOWN_IMAGE = """(root) => {
  const img = [...root.querySelectorAll('img')].find(i => i.offsetParent !== null && i.naturalWidth > 0);
  if (!img) return null;
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  c.getContext('2d').drawImage(img, 0, 0);
  return c.toDataURL('image/png');
}"""


def shown_image_digest(widget) -> str | None:
    data = widget.evaluate(JS_SHOWN_IMAGE)
    return None if data is None else hashlib.sha256(data.encode()).hexdigest()[:16]


def page_name(page: str) -> str:
    return page.replace("/", "_")


@pytest.mark.parametrize("page", PAGES)
def test_page(page, browser, server):
    SHOTS.mkdir(parents=True, exist_ok=True)
    html_file = ROOT / "_build" / "html" / f"{page}.html"
    assert html_file.is_file(), f"{page} is in _toc.yml but {html_file} was not built"
    n_widget_views = html_file.read_text(encoding="utf-8").count('type="application/vnd.jupyter.widget-view+json"')

    rec = PageRecorder(browser, server)
    try:
        response = rec.page.goto(f"{server}/{page}.html", wait_until="load")
        assert response is not None and response.status == 200, f"{page}: HTTP {response and response.status}"
        assert rec.page.title(), f"{page}: empty <title>"

        # 1. every equation typeset, no raw LaTeX left in the visible text
        status = rec.page.evaluate(JS_WAIT_MATHJAX)
        assert status in ("typeset", "no math"), f"{page}: {status}"
        math = rec.page.evaluate(JS_MATH_REPORT)
        assert not math["untypeset"], f"{page}: equations not typeset: {math['untypeset'][:5]}"
        assert not math["raw"], f"{page}: raw LaTeX in the page text: {math['raw']}"

        # 2. every widget view rendered by the embedded widget manager (it inserts a
        #    div.widget-subarea before each view's <script> and renders into it)
        widgets = []
        if n_widget_views:
            rec.page.wait_for_function(
                "n => [...document.querySelectorAll('.widget-subarea')]"
                ".filter(e => e.querySelector('.jupyter-widgets')).length >= n",
                arg=n_widget_views, timeout=30_000)
            widgets = rec.page.query_selector_all(".widget-subarea")
            assert len(widgets) == n_widget_views, (
                f"{page}: {n_widget_views} widget views in the HTML, {len(widgets)} rendered")

        # 3. images present and loaded (static figures and the frames the widgets show)
        images = rec.page.evaluate(JS_IMAGES)
        broken = [i["src"] for i in images if not i["ok"]]
        assert not broken, f"{page}: images that did not load: {broken}"

        rec.page.screenshot(path=str(SHOTS / f"{page_name(page)}.png"), full_page=True)
        rec.page.screenshot(path=str(SHOTS / f"{page_name(page)}-top.png"))

        for k, widget in enumerate(widgets):
            widget.scroll_into_view_if_needed()
            sliders = widget.query_selector_all(".widget-slider")
            if not sliders:
                continue  # e.g. a progress bar: rendered is all we can ask
            widget.screenshot(path=str(SHOTS / f"{page_name(page)}-widget{k}-before.png"))
            for s, slider in enumerate(sliders):
                before_img = shown_image_digest(widget)
                before_label = slider.query_selector(".widget-readout").inner_text()
                assert before_img is not None, f"{page}: widget {k} has a slider but shows no image"
                handle = slider.query_selector(".noUi-handle")
                handle.focus()
                # Move one step right, or left when already at the right end.
                key = "ArrowLeft" if handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax") \
                    else "ArrowRight"
                rec.page.keyboard.press(key)
                rec.page.wait_for_function(
                    "([el, before]) => el.querySelector('.widget-readout').innerText !== before",
                    arg=[slider, before_label], timeout=5_000)
                rec.page.wait_for_timeout(300)  # let the Stack swap in the new frame
                after_label = slider.query_selector(".widget-readout").inner_text()
                after_img = shown_image_digest(widget)
                assert after_img is not None and after_img != before_img, (
                    f"{page}: widget {k}, slider {s}: moving {before_label!r} -> {after_label!r} did not change the image")
            widget.screenshot(path=str(SHOTS / f"{page_name(page)}-widget{k}-after.png"))

        # 4. nothing went wrong on the way
        assert not rec.blocked, f"{page}: requests that would leave the machine (or missing local copies): {rec.blocked}"
        assert not rec.http_errors, f"{page}: failed requests: {rec.http_errors}"
        assert not rec.console_errors, f"{page}: console errors: {rec.console_errors}"
    finally:
        rec.close()
