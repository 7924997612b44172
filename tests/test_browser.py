"""The built website in a real browser (Debian's chromium driven by Playwright).

Every page in _toc.yml is opened from a local server and checked, with every dropdown,
solution and hidden cell input opened: it loads; every equation is typeset by MathJax and
none is typeset as an error (an undefined macro, a missing brace); no TeX source is left in
the rendered text outside code; the widgets and images the notebook's stored outputs hold
are all there (counted in the .ipynb, not in the HTML under test) and load; each download
link serves the page's source file; every link within the site resolves, its #anchor included
(on the library reference pages every documented function and class has a "[source]" link, to
its highlighted code); there is exactly one visible search box; a chapter
opens with its title; a Chinese term is drawn with a real glyph of a CJK font; the console
has no errors; and on pages with widgets each slider changes the displayed image. A last
test plants each kind of defect in a page and checks that the detectors report it. The test machine is
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
import html
import http.server
import json
import mimetypes
import os
import re
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BROWSER_DIR = ROOT / "tests" / "browser"
NODE_MODULES = BROWSER_DIR / "node_modules"
SHOTS = BROWSER_DIR / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")  # e.g. /usr/bin/google-chrome in CI
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
        # Generous: on a 2-core machine shared by many jobs (load average 20) a page load has
        # taken over 30 s, Playwright's default.
        self.page.set_default_timeout(90_000)
        self.page.set_default_navigation_timeout(120_000)
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


# --------------------------------------------------------------------------- what the page must hold
REMOVED_TAGS = {"remove-cell", "remove-output"}   # myst-nb drops these cells' outputs from the page
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")
MD_IMAGE = re.compile(r"!\[[^\]]*\]\(|<img\b|^:::?\{(?:image|figure)\}|^```\{(?:image|figure)\}", re.M)
CJK_FONTS = {  # the faces _static/cjk.css assembles "Book CJK" from (family names as reported)
    "Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "PingFang SC", "Microsoft YaHei",
    "WenQuanYi Zen Hei", "WenQuanYi Micro Hei"}


def source_file(page: str) -> Path:
    """The .ipynb or .md file a page is built from."""
    for suffix in (".ipynb", ".md"):
        if (ROOT / f"{page}{suffix}").is_file():
            return ROOT / f"{page}{suffix}"
    raise FileNotFoundError(f"{page} is in _toc.yml but has no .ipynb or .md file")


def expected_outputs(page: str) -> tuple[int, int]:
    """(widget views, images) the page must show, counted in its source file: the stored
    outputs of every cell not removed from the page (a widget view wins over the image
    fallback of the same output, as in myst-nb's render priority), plus Markdown images."""
    path = source_file(page)
    if path.suffix == ".md":
        return 0, len(MD_IMAGE.findall(path.read_text(encoding="utf-8")))
    nb = json.loads(path.read_text(encoding="utf-8"))
    widgets = images = 0
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            images += len(MD_IMAGE.findall(source))
            continue
        if REMOVED_TAGS & set(cell.get("metadata", {}).get("tags", [])):
            continue
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_MIME in data:
                widgets += 1
            elif any(m in data for m in IMAGE_MIMES):
                images += 1
    return widgets, images


# --------------------------------------------------------------------------- page checks (JavaScript)
JS_WAIT_MATHJAX = """async () => {
  if (!document.querySelector('.math')) return 'no math';
  for (let i = 0; i < 300 && !(window.MathJax && MathJax.startup && MathJax.startup.promise); i++)
    await new Promise(r => setTimeout(r, 100));
  if (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) return 'MathJax never started';
  await MathJax.startup.promise;
  return 'typeset';
}"""

# Open every sphinx-design dropdown and hidden cell input (<details>), and every
# sphinx-togglebutton section, so that what a reader can unfold is checked and shown too.
JS_OPEN_ALL = """async () => {
  let n = 0;
  document.querySelectorAll('details:not([open])').forEach(d => { d.open = true; n++; });
  document.querySelectorAll('button.toggle-button[aria-expanded="false"]').forEach(b => { b.click(); n++; });
  document.querySelectorAll('.toggle-hidden').forEach(e => { e.classList.remove('toggle-hidden'); n++; });
  await new Promise(r => setTimeout(r, 200));
  return n;
}"""

JS_UNTYPESET = """() => [...document.querySelectorAll('.math')]
  .filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 80))"""

# TeX source in the rendered text: the visible text of the page outside code, outputs
# (<pre>), typeset maths and scripts. Any `$`, a control word (\frac, \mathbb, \sum,
# \begin, \left, ...), \( \) \[ \] \{ \}, or a TeX sub/superscript group (^{ _{) is a leftover.
JS_TEX_LEFTOVERS = r"""(root) => {
  const skip = 'pre, code, kbd, samp, script, style, textarea, mjx-container, .highlight, .MathJax';
  const walker = document.createTreeWalker(root || document.body, NodeFilter.SHOW_TEXT);
  let text = '';
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    if (!el || el.closest(skip)) continue;
    if (!el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true})) continue;
    text += node.nodeValue;
  }
  const found = [];
  const rx = /\$|\\[A-Za-z]+|\\[()\[\]{}]|[\^_]\{/g;
  for (let m; (m = rx.exec(text)) && found.length < 12; )
    found.push(m[0] + '  in  ...' + text.slice(Math.max(0, m.index - 50), m.index + 50).replace(/\s+/g, ' ') + '...');
  return found;
}"""

# Equations MathJax typeset as an error: an error node (a TeX syntax error such as a
# missing brace gives <mjx-merror data-mjx-error="...">), or an undefined macro, which
# MathJax 3's noundefined extension shows as its name in red (mtext mathcolor="red" in the
# internal MathML, with no error node in the output).
JS_MATH_ERRORS = r"""() => {
  const errors = [];
  document.querySelectorAll('mjx-merror, [data-mjx-error]').forEach(e =>
    errors.push('error node: ' + (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 120)));
  const mj = window.MathJax;
  if (mj && mj.startup && mj.startup.document && mj.startup.toMML) {
    for (const item of mj.startup.document.math) {
      const mml = mj.startup.toMML(item.root);
      if (/<merror|mathcolor="red"/.test(mml)) {
        const red = (mml.match(/<mtext[^>]*mathcolor="red"[^>]*>([^<]*)</) || [])[1];
        errors.push('TeX ' + JSON.stringify(item.math.slice(0, 100)) + (red ? ': undefined ' + red : ': error'));
      }
    }
  }
  return errors;
}"""

JS_IMAGES = """async () => {
  const imgs = [...document.querySelectorAll('img')];
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
  return imgs.map(i => ({src: i.currentSrc.slice(0, 120), ok: i.complete && i.naturalWidth > 0}));
}"""

# Static images in the article (figures, Markdown images), not the frames the widgets draw.
JS_ARTICLE_IMAGES = """() => [...document.querySelectorAll('article.bd-article img')]
  .filter(i => !i.closest('.widget-subarea, .jupyter-widgets')).length"""

JS_WIDGET_SCRIPTS = """() => document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length"""

JS_SHOWN_IMAGE = """(root) => {
  const img = [...root.querySelectorAll('img')].find(i => i.offsetParent !== null && i.naturalWidth > 0);
  if (!img) return null;
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  c.getContext('2d').drawImage(img, 0, 0);
  return c.toDataURL('image/png');
}"""

# Visible search boxes: {cls, inView} for each (inView: inside the window as it is now).
JS_VISIBLE_SEARCH_BOXES = """() => [...document.querySelectorAll('.search-button-field, input[type="search"]')]
  .filter(e => e.checkVisibility({checkOpacity: true, checkVisibilityCSS: true})
               && e.getBoundingClientRect().width > 0)
  .map(e => { const r = e.getBoundingClientRect();
              return {cls: e.className || e.tagName, inView: r.top >= 0 && r.bottom <= innerHeight}; })"""

JS_DOWNLOAD_LINKS = """() => [...document.querySelectorAll('.dropdown-download-buttons a[href]')].map(a => a.href)"""
JS_ARTICLE_LINKS = """() => [...document.querySelectorAll('article.bd-article a[href]')].map(a => a.href)"""
# Documented functions, classes and methods (autodoc entries) and whether each has its "[source]" link.
JS_SOURCE_LINKS = """() => [...document.querySelectorAll(
    'article.bd-article dl.py:is(.function, .class, .method) > dt.sig')].map(dt => ({
      id: dt.id, source: (dt.querySelector('.viewcode-link') || {closest: () => null}).closest('a')?.href || null}))"""

_FETCHED: dict[str, tuple[int, set[str]]] = {}   # page URL -> (HTTP status, element ids), shared by all pages


def broken_links(rec, server: str, hrefs) -> list[str]:
    """The links among hrefs that point into the site (the local server) and do not resolve: a page that
    is not served, or a #fragment naming no element of its page. Each page is fetched once per session."""
    bad = []
    for href in hrefs:
        if not href.startswith(server + "/"):
            continue                        # external (bibliography DOIs, the repository): not followed offline
        url, _, frag = href.partition("#")
        if url not in _FETCHED:
            got = rec.context.request.get(url)
            body = got.text() if got.ok and url.endswith(".html") else ""
            ids = set(re.findall(r'\sid="([^"]+)"', body)) | set(re.findall(r"\sid='([^']+)'", body))
            _FETCHED[url] = (got.status, {html.unescape(i) for i in ids})
        status, ids = _FETCHED[url]
        if status != 200:
            bad.append(f"{href} -> HTTP {status}")
        elif frag and unquote(frag) not in ids:
            bad.append(f"{href} -> no element with id {unquote(frag)!r}")
    return bad

# The first heading or code cell of the article: a chapter must open with its title.
JS_FIRST_BLOCK = """() => {
  const first = document.querySelector('article.bd-article h1, article.bd-article .cell');
  return first ? {tag: first.tagName, text: first.textContent.trim().slice(0, 80),
                  top: first.getBoundingClientRect().top} : null;
}"""

# Mark the first visible element of the article whose own text has CJK characters.
JS_MARK_CJK = r"""() => {
  const walker = document.createTreeWalker(document.querySelector('article.bd-article') || document.body,
                                           NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    if (!/[\u3400-\u9fff]/.test(node.nodeValue) || el.closest('pre, code, script, style, mjx-container')) continue;
    if (!el.checkVisibility()) continue;
    el.setAttribute('data-cjk-probe', '1');
    const own = [...el.childNodes].filter(n => n.nodeType === 3).map(n => n.nodeValue).join('');
    return own.match(/[\u3400-\u9fff]/g).join('');
  }
  return null;
}"""


def shown_image_digest(widget) -> str | None:
    data = widget.evaluate(JS_SHOWN_IMAGE)
    return None if data is None else hashlib.sha256(data.encode()).hexdigest()[:16]


def page_name(page: str) -> str:
    return page.replace("/", "_")


def cjk_glyphs(rec: PageRecorder) -> tuple[str | None, dict[str, int]]:
    """The CJK characters of the first Chinese term on the page, and the platform fonts that
    drew that element's text: {family: glyphs} (Chrome DevTools' CSS.getPlatformFontsForNode)."""
    chars = rec.page.evaluate(JS_MARK_CJK)
    if chars is None:
        return None, {}
    cdp = rec.context.new_cdp_session(rec.page)
    try:
        cdp.send("DOM.enable")
        cdp.send("CSS.enable")
        root = cdp.send("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
        node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": "[data-cjk-probe]"})["nodeId"]
        fonts = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
    finally:
        cdp.detach()
    return chars, {f["familyName"]: int(f["glyphCount"]) for f in fonts}


@pytest.mark.parametrize("page", PAGES)
def test_page(page, browser, server):
    SHOTS.mkdir(parents=True, exist_ok=True)
    html_file = ROOT / "_build" / "html" / f"{page}.html"
    assert html_file.is_file(), f"{page} is in _toc.yml but {html_file} was not built"
    n_widget_views, n_images = expected_outputs(page)

    rec = PageRecorder(browser, server)
    try:
        response = rec.page.goto(f"{server}/{page}.html", wait_until="load")
        assert response is not None and response.status == 200, f"{page}: HTTP {response and response.status}"
        assert rec.page.title(), f"{page}: empty <title>"

        # 1. MathJax done, and the widget views the notebook holds each rendered by the
        #    embedded widget manager (it inserts a div.widget-subarea before each view's
        #    <script> and renders into it)
        status = rec.page.evaluate(JS_WAIT_MATHJAX)
        assert status in ("typeset", "no math"), f"{page}: {status}"
        n_scripts = rec.page.evaluate(JS_WIDGET_SCRIPTS)
        assert n_scripts == n_widget_views, (
            f"{page}: the notebook's stored outputs hold {n_widget_views} widget views, the page {n_scripts}")
        widgets = []
        if n_widget_views:
            rec.page.wait_for_function(
                "n => [...document.querySelectorAll('.widget-subarea')]"
                ".filter(e => e.querySelector('.jupyter-widgets')).length >= n",
                arg=n_widget_views, timeout=30_000)
            widgets = rec.page.query_selector_all(".widget-subarea")
            assert len(widgets) == n_widget_views, (
                f"{page}: {n_widget_views} widget views in the notebook, {len(widgets)} rendered")

        # The page as a reader first sees it (the top: title, one search box, Chinese). The
        # timeouts allow for a busy 2-core machine, where a full-page screenshot can take 30 s.
        boxes = rec.page.evaluate(JS_VISIBLE_SEARCH_BOXES)
        assert len(boxes) == 1, f"{page}: {len(boxes)} visible search boxes: {boxes}"
        assert boxes[0]["inView"], f"{page}: the search box is outside the window when the page opens"
        rec.page.screenshot(path=str(SHOTS / f"{page_name(page)}-top.png"), timeout=120_000)
        rec.page.screenshot(path=str(SHOTS / f"{page_name(page)}.png"), full_page=True, timeout=120_000)

        # 2. everything a reader can unfold, unfolded; every equation typeset, none as an
        #    error, and no TeX source left in the rendered text
        rec.page.evaluate(JS_OPEN_ALL)
        untypeset = rec.page.evaluate(JS_UNTYPESET)
        assert not untypeset, f"{page}: equations not typeset: {untypeset[:5]}"
        math_errors = rec.page.evaluate(JS_MATH_ERRORS)
        assert not math_errors, f"{page}: equations typeset as errors: {math_errors}"
        leftovers = rec.page.evaluate(JS_TEX_LEFTOVERS)
        assert not leftovers, f"{page}: TeX source left in the rendered text (outside code):\n" + "\n".join(leftovers)

        # 3. the notebook's images all on the page, and every image loaded (static figures
        #    and the frames the widgets show)
        n_article_images = rec.page.evaluate(JS_ARTICLE_IMAGES)
        assert n_article_images == n_images, (
            f"{page}: the source holds {n_images} images (outputs of cells not removed, Markdown images), "
            f"the page shows {n_article_images}")
        images = rec.page.evaluate(JS_IMAGES)
        broken = [i["src"] for i in images if not i["ok"]]
        assert not broken, f"{page}: images that did not load: {broken}"

        # 4. the download button serves this page's source file, byte for byte
        links = rec.page.evaluate(JS_DOWNLOAD_LINKS)
        assert links, f"{page}: no download link"
        source = source_file(page).read_bytes()
        for href in links:
            got = rec.context.request.get(href)
            assert got.ok, f"{page}: download link {href} -> HTTP {got.status}"
            assert got.body() == source, f"{page}: download link {href} does not serve {source_file(page).name}"

        # 5. a chapter opens with its title; Chinese drawn with real glyphs
        if source_file(page).suffix == ".ipynb":
            first = rec.page.evaluate(JS_FIRST_BLOCK)
            assert first and first["tag"] == "H1", f"{page}: the article opens with {first}, not the chapter title"
            assert first["top"] < 300, f"{page}: the title starts {first['top']:.0f} px down the page"
        chars, fonts = cjk_glyphs(rec)
        if chars is not None:
            cjk = {f: n for f, n in fonts.items() if f in CJK_FONTS}
            assert sum(cjk.values()) >= len(chars), (
                f"{page}: {chars!r} was drawn with {fonts}, not a CJK font of _static/cjk.css "
                f"(install one, e.g. fonts-wqy-zenhei: make system-deps)")

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

        # 6. every link within the site resolves, #anchor included; on the library reference every
        #    function, class and method has a "[source]" link (viewcode's highlighted code)
        bad = broken_links(rec, server, set(rec.page.evaluate(JS_ARTICLE_LINKS)))
        assert not bad, f"{page}: links that do not resolve:\n" + "\n".join(sorted(bad))
        if page.startswith("book/reference/") and page != "book/reference/index":
            entries = rec.page.evaluate(JS_SOURCE_LINKS)
            assert entries, f"{page}: no documented function or class"
            missing = [e["id"] for e in entries if not e["source"]]
            assert not missing, f"{page}: entries without a [source] link: {missing}"

        # 7. nothing went wrong on the way
        assert not rec.blocked, f"{page}: requests that would leave the machine (or missing local copies): {rec.blocked}"
        assert not rec.http_errors, f"{page}: failed requests: {rec.http_errors}"
        assert not rec.console_errors, f"{page}: console errors: {rec.console_errors}"
    finally:
        rec.close()


# --------------------------------------------------------------------------- the detectors themselves
PLANTED = r"""async () => {
  const article = document.querySelector('article.bd-article');
  const box = document.createElement('div');
  box.id = 'planted';
  box.innerHTML = '<p>raw inline maths $x^{2}$ and a raw \\frac{a}{b}</p>'
    + '<details><summary>Solution</summary><p>hidden \\mathbb{E} in a dropdown</p></details>'
    + '<p><span class="math notranslate nohighlight">\\(\\undefinedmacro{x} + 1\\)</span></p>'
    + '<p><span class="math notranslate nohighlight">\\(a & b\\)</span></p>'
    + '<pre>$ legit shell prompt \\frac in code</pre>';
  article.prepend(box);
  await MathJax.typesetPromise([box]);
  console.error('planted console error');
}"""


def test_detectors_catch_planted_defects(browser, server):
    """Each check of test_page fails on the defect it is for: raw TeX in prose and in a
    closed dropdown (once opened), an undefined macro, a TeX syntax error, a console error;
    TeX inside code is not reported."""
    rec = PageRecorder(browser, server)
    try:
        rec.page.goto(f"{server}/book/01_probability.html", wait_until="load")
        assert rec.page.evaluate(JS_WAIT_MATHJAX) == "typeset"
        assert rec.page.evaluate(JS_MATH_ERRORS) == [] and rec.page.evaluate(JS_TEX_LEFTOVERS) == []
        rec.page.evaluate(PLANTED)
        closed = rec.page.evaluate(JS_TEX_LEFTOVERS)
        rec.page.evaluate(JS_OPEN_ALL)
        leftovers = rec.page.evaluate(JS_TEX_LEFTOVERS)
        errors = rec.page.evaluate(JS_MATH_ERRORS)
        found = [f.split("  in  ")[0] for f in leftovers]
        assert found == ["$", "^{", "$", "\\frac", "\\mathbb"], leftovers
        assert "\\mathbb" not in [f.split("  in  ")[0] for f in closed], "a closed dropdown's text counted as rendered"
        assert not any("legit" in f for f in leftovers), f"TeX inside <pre> reported: {leftovers}"
        assert any("undefined \\undefinedmacro" in e for e in errors), errors
        assert any("error node" in e for e in errors), errors
        assert any("planted console error" in e for e in rec.console_errors), rec.console_errors
        here = f"{server}/book/01_probability.html"
        assert broken_links(rec, server, [here, f"{server}/book/02_information_theory.html"]) == []
        bad = broken_links(rec, server, [f"{server}/book/no_such_page.html", f"{here}#no-such-anchor",
                                         "https://example.org/external"])
        assert [b.split(" -> ")[0] for b in bad] == [f"{server}/book/no_such_page.html", f"{here}#no-such-anchor"], bad
    finally:
        rec.close()
