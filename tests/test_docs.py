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
# Pages whose ```python blocks run as written (other pages show fragments of longer sessions);
# index.md fits two models (about 25 s of CPU).
RUNNABLE_PAGES = ["index.md", "choosing-a-prior.md", "benchmarks.md"]

for plugin in ("mkdocs", "material", "mkdocstrings", "mkdocs_jupyter"):
    pytest.importorskip(plugin, reason=f"the docs build needs the docs extra ({plugin})")


def load_hook():
    spec = importlib.util.spec_from_file_location("psb_docs", DOCS / "hooks" / "psb_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PSBNN_DOCS_EXECUTE": "false"}
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return site


def page_text(site, page):
    html = (site / page / "index.html").read_text()
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_benchmark_page_shows_every_results_file(site):
    text = page_text(site, "benchmarks")
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        payload = json.loads(path.read_text())
        assert path.stem in text
        command = payload["meta"]["command"]
        assert command.replace("<", "&lt;").replace(">", "&gt;") in text
        for key in payload["rows"][0] if payload["rows"] else []:
            assert key in text


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


def test_method_table_lists_the_registry(site):
    text = page_text(site, "choosing-an-inference-method")
    for name in list(psb.METHODS) + list(psb.guides.GUIDES):
        assert f" {name} " in text


def test_tutorials_are_pages(site):
    for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
        assert (site / "tutorials" / notebook.stem / "index.html").is_file()


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
