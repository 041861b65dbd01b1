"""The documentation site builds with ``mkdocs build --strict``, its generated pages hold what the
code and the benchmark results say, and the code on the pages runs."""

import doctest
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pyro_sparse_bnn as psb

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_NAME = "pyro_sparse_bnn"
DOCS = ROOT / "docs"
RESULTS = ROOT / "benchmarks" / "results"
# Pages whose ```python blocks run as written (other pages show fragments of longer sessions);
# index.md fits two models (about 25 s of CPU).
RUNNABLE_PAGES = ["index.md", "choosing-a-prior.md", "benchmarks.md", "ivon.md"]

for plugin in ("mkdocs", "material", "mkdocstrings", "mkdocs_jupyter"):
    pytest.importorskip(plugin, reason=f"the docs build needs the docs extra ({plugin})")


def load_hook():
    spec = importlib.util.spec_from_file_location("psb_docs", DOCS / "hooks" / "psb_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_BUILT: dict[str, Path] = {}


def build_site(tmp_path_factory) -> Path:
    """``mkdocs build --strict`` into a temporary folder, once per test session (the browser
    tests in ``test_site_browser.py`` share it)."""
    if "site" in _BUILT:
        return _BUILT["site"]
    site = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    _BUILT["site"] = site
    return site


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return build_site(tmp_path_factory)


def page_text(site, page):
    html = (site / page / "index.html").read_text()
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def links(site, page, attribute, html=None):
    """The files that a page's ``attribute`` (``href``, ``src``) URLs name, as paths in ``site``."""
    html = html or (site / page / "index.html").read_text()
    urls = re.findall(rf'\s{attribute}="([^"#?:]+)"', html)
    return {Path(os.path.normpath(site / page / url)) for url in urls}


def without_details(html):
    """``html`` without its collapsed (``<details>``) blocks."""
    return re.sub(r"<details.*?</details>", "", html, flags=re.S)


def test_benchmark_page_shows_every_results_file(site):
    text = page_text(site, "benchmarks")
    for path in sorted(RESULTS.glob("*.json")):
        payload = json.loads(path.read_text())
        assert path.stem in text
        command = payload["meta"]["command"]
        assert command.replace("<", "&lt;").replace(">", "&gt;") in text
        for key in payload["rows"][0] if payload["rows"] else []:
            assert key in text
        # the file itself is in the site, linked from the page
        assert (site / "benchmarks" / "results" / path.name).read_bytes() == path.read_bytes()
        assert site / "benchmarks" / "results" / path.name in links(site, "benchmarks", "href")


def test_benchmark_page_is_summaries_and_figures(site):
    hook = load_hook()
    html = (site / "benchmarks" / "index.html").read_text()
    visible = without_details(html)
    tables = re.findall(r"<table>.*?</table>", visible, flags=re.S)
    index, summaries = tables[0], tables[1:]
    n_files = len(list(RESULTS.glob("*.json")))
    assert index.count("<tr>") == n_files + 1
    assert summaries and all(t.count("<tr>") <= hook.SUMMARY_ROWS + 1 for t in summaries)
    total_rows = sum(len(json.loads(p.read_text())["rows"]) for p in RESULTS.glob("*.json"))
    assert sum(t.count("<tr>") for t in summaries) < total_rows / 4  # the detail is collapsed
    assert html.count("<details") >= n_files  # each file's settings and rows
    figures = sorted(RESULTS.glob("*.png"))
    assert any(p.name == "pareto_iris.png" for p in figures)
    shown = links(site, "benchmarks", "src", visible)
    for png in figures:  # every figure shown, outside the collapsed blocks, and copied
        assert site / "benchmarks" / "results" / png.name in shown
        assert (site / "benchmarks" / "results" / png.name).read_bytes() == png.read_bytes()
    assert site / "benchmarks" / "results" / "pareto_iris.png" in links(site, "vadam", "src")


def test_benchmark_summaries():
    hook = load_hook()
    rows = [
        {"method": "a", "seed": 0, "error": 0.1, "n": 3},
        {"method": "a", "seed": 1, "error": 0.3, "n": 5},
        {"method": "b", "seed": 0, "error": 0.2, "n": 4, "sizes": [1, 2]},
        {"method": "b", "seed": 1, "error": 0.2, "n": 4},
    ]
    [(caption, table)] = hook.summary_tables({"meta": {}, "rows": rows})
    assert caption == "Mean ± sd over the seeds"
    assert table == [
        {"method": "a", "seeds": 2, "error": "0.2 ± 0.14", "n": "4 ± 1.4"},
        {"method": "b", "seeds": 2, "error": "0.2 ± 0", "n": "4 ± 0"},
    ]
    summary = [{"method": "a", "error": 0.2}]  # a summary the script stored comes first
    assert hook.summary_tables({"meta": {"summary": summary}, "rows": rows})[0][1] == summary
    marked = [*rows, {"kind": "summary", "method": "a", "error": 0.2}]
    assert hook.summary_tables({"meta": {}, "rows": marked}) == [
        ("Rows with `kind` = `summary`", [{"method": "a", "error": 0.2}])
    ]
    many = [{"method": str(i), "error": 0.1} for i in range(hook.SUMMARY_ROWS + 1)]
    assert hook.summary_tables({"meta": {}, "rows": many}) == []  # only in the collapsed detail


def test_benchmark_cells_are_the_stored_numbers():
    hook = load_hook()
    rows = [{"method": "svi", "n_kept": 12, "test_error": 0.0263157894, "sizes": [1, 2]}]
    assert hook._table(rows).splitlines() == [
        "| method | n_kept | test_error | sizes |",
        "|---|---|---|---|",
        "| svi | 12 | 0.02632 | [1, 2] |",
    ]


def test_api_pages_cover_every_public_module(site):
    hook = load_hook()
    modules = hook._modules()
    assert {"pyro_sparse_bnn.plots", "pyro_sparse_bnn.infer.result"} <= set(modules)
    for module in modules:
        page = hook._api_path(module).removesuffix(".md")
        assert (site / page / "index.html").is_file(), module
    assert "plot_relevance_forest" in page_text(site, "api/plots")
    for internal in ("sites", "validation", "infer/graph_simplify", "infer/sgmcmc/run"):
        assert f"{PACKAGE_NAME}.{internal.replace('/', '.')}" not in modules
        assert not (site / "api" / internal / "index.html").exists(), internal
    assert "fit_sgmcmc" in page_text(site, "api/infer/sgmcmc")  # a package page shows its exports
    assert not [m for m in modules if any(part.startswith("_") for part in m.split("."))]
    api_pages = {
        p.parent.relative_to(site / "api").as_posix() for p in site.glob("api/**/index.html")
    }
    assert api_pages == {"."} | {hook._api_path(m)[4:-3] for m in modules}  # no other API page


def test_method_table_lists_the_registry(site):
    text = page_text(site, "choosing-an-inference-method")
    for name in list(psb.METHODS) + list(psb.guides.GUIDES):
        assert f" {name} " in text


def test_tutorials_are_pages_with_their_outputs(site):
    for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
        html = (site / "tutorials" / notebook.stem / "index.html").read_text()
        assert re.search(r'<img [^>]*src="data:image/png;base64,', html), notebook.name  # figures
        assert "jp-OutputArea-output" in html, notebook.name  # text and tables


def test_maths_is_served_by_the_site(site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 20
    mathjax = site / "assets" / "mathjax" / "tex-mml-chtml.js"
    assert mathjax.is_file() and (site / "assets" / "javascripts" / "mathjax.js").is_file()
    fonts = site / "assets" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2"
    assert len(list(fonts.glob("*.woff"))) > 10
    for page in pages:
        html = page.read_text()
        scripts = re.findall(r"<script[^>]*\ssrc=\"([^\"]*)\"", html)
        assert not [s for s in scripts if re.match(r"(https?:)?//", s)], page  # no CDN
        assert not re.search(r"(https?:)?//[^\"'\s]*(mathjax|katex)", html, flags=re.I), page
        if page.name == "index.html":  # every page loads the site's MathJax
            local = [s for s in scripts if s.endswith("assets/mathjax/tex-mml-chtml.js")]
            assert len(local) == 1 and Path(os.path.normpath(page.parent / local[0])) == mathjax, (
                page
            )
    assert 'class="arithmatex"' in (site / "benchmarks" / "index.html").read_text()


def test_hook_docstring_examples():
    assert doctest.testmod(load_hook()).failed == 0


@pytest.mark.parametrize(
    "page",
    [pytest.param(p, marks=pytest.mark.slow) if p == "index.md" else p for p in RUNNABLE_PAGES],
)
def test_page_code_runs(page, monkeypatch):
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S):
        exec(compile(block, page, "exec"), namespace)
    if page == "index.md":
        kept = namespace["kept"]
        assert kept[:4].all() and kept.sum() <= 8  # every signal; at most 4 of the 16 nulls
