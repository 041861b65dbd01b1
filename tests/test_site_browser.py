"""The built site in a real browser: headless Chromium loads pages from a local HTTP server, runs
their scripts, and we read the resulting DOM. Pages load with every file they ask for, tutorials
show their figures and outputs, and MathJax, served by the site itself, typesets every formula.

Needs Debian's ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs it).
"""

import functools
import http.server
import re
import shutil
import subprocess
import threading
import urllib.parse
from html.parser import HTMLParser

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH: apt-get install chromium (.ci/run does)"
)

from test_docs import ROOT, build_site  # noqa: E402  (after the skip: it needs the docs extra)

TUTORIALS = sorted((ROOT / "tutorials").glob("*.ipynb"))
PAGES = ["", "benchmarks/", *(f"tutorials/{p.stem}/" for p in TUTORIALS)]
RAW_MATHS = re.compile(r"\$\$|\\\(|\\\)|\\\[|\\\]|\\(frac|sum|mathrm|lambda|tau|sim)\b")
"""TeX left as text: delimiters, or commands the pages use."""
HIDDEN = {"head", "script", "style", "code", "pre", "textarea", "noscript", "mjx-container", "svg"}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}
VOID |= {"track", "wbr", "param"}


class Dom(HTMLParser):
    """What a reader sees in a serialised DOM: visible text, images, MathJax output, and the text
    of the notebooks' output areas."""

    def __init__(self, html: str):
        super().__init__()
        self.stack: list[tuple[str, bool]] = []  # (tag, inside a notebook output)
        self.text: list[str] = []
        self.outputs: list[str] = []
        self.images: list[str] = []
        self.maths = 0
        self.feed(html)
        self.visible = " ".join(" ".join(self.text).split())

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src") or "")
        if tag == "mjx-container":
            self.maths += 1
        if tag not in VOID:
            output = "jp-OutputArea-output" in (attrs.get("class") or "").split()
            self.stack.append((tag, output or bool(self.stack and self.stack[-1][1])))

    def handle_endtag(self, tag):
        if any(t == tag for t, _ in self.stack):
            while self.stack.pop()[0] != tag:
                pass

    def handle_data(self, data):
        if self.stack and self.stack[-1][1]:
            self.outputs.append(data)
        if not HIDDEN & {t for t, _ in self.stack}:
            self.text.append(data)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The built site on http://127.0.0.1:PORT/, and the (path, status) of every request."""
    site = build_site(tmp_path_factory)
    requests: list[tuple[str, int]] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_request(self, code="-", size="-"):
            requests.append((self.path, int(code)))

        def log_message(self, *args):
            pass

    handler = functools.partial(Handler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", requests, site
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def pages(server, tmp_path_factory):
    """Each page of :data:`PAGES` after Chromium ran its scripts, and the requests it made."""
    url, requests, _ = server
    loaded = {}
    for page in PAGES:
        start = len(requests)
        profile = tmp_path_factory.mktemp("chromium")
        command = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=15000",
            "--dump-dom",
            url + page,
        ]
        run = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and "</html>" in run.stdout, run.stderr[-2000:]
        loaded[page] = (Dom(run.stdout), requests[start:])
    return loaded


@pytest.mark.parametrize("page", PAGES)
def test_page_loads_with_everything_it_asks_for(pages, page):
    dom, requests = pages[page]
    assert requests[0] == (f"/{page}", 200)
    assert not [r for r in requests if r[1] >= 400], requests
    assert "pyro_sparse_bnn" in dom.visible  # the site's header
    assert len(dom.visible) > 500
    assert ("/assets/mathjax/tex-mml-chtml.js", 200) in requests  # from the site, not a CDN


@pytest.mark.parametrize("page", PAGES)
def test_maths_is_typeset(pages, page):
    dom, requests = pages[page]
    assert not RAW_MATHS.search(dom.visible), RAW_MATHS.search(dom.visible)
    if page == "" and not dom.maths:
        return  # the home page has no formula
    assert dom.maths >= (4 if page == "benchmarks/" else 1)
    fonts = [path for path, status in requests if path.endswith(".woff") and status == 200]
    assert fonts  # MathJax's own fonts, from the site


def test_benchmark_page_shows_its_figures(pages):
    dom, requests = pages["benchmarks/"]
    for png in sorted((ROOT / "benchmarks" / "results").glob("*.png")):
        url = f"/benchmarks/results/{png.name}"
        assert url in {urllib.parse.urljoin("/benchmarks/", src) for src in dom.images}
        assert (url, 200) in requests
    assert "Mean ± sd" in dom.visible or "Summary stored by the script" in dom.visible


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_shows_figures_and_outputs(pages, path):
    dom, _ = pages[f"tutorials/{path.stem}/"]
    figures = [src for src in dom.images if src.startswith("data:image/png;base64,")]
    assert figures and all(len(src) > 1000 for src in figures)
    assert len("".join(dom.outputs).strip()) > 100  # printed text and tables
    if "$" in path.read_text():
        assert dom.maths > 0
