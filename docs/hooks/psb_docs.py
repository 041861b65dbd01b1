"""MkDocs hook: pages generated at build time from the code and the benchmark results.

* ``API reference``: one page per public module of ``pyro_sparse_bnn`` (mkdocstrings), found by
  walking the package, so a new module appears without editing ``mkdocs.yml``.
* ``Tutorials``: the notebooks in ``tutorials/`` (outside ``docs/``), rendered by mkdocs-jupyter.
* ``Inference methods``: the method pages among :data:`METHOD_PAGES` that exist; pages in ``docs/``
  that no nav entry names are listed under ``More``.
* Markers in pages: ``<!-- benchmark-tables -->`` becomes one section per
  ``benchmarks/results/*.json`` (:func:`benchmark_tables`: a short summary table, the figures,
  the settings and every row collapsed, a link to the file); ``<!-- methods-table -->`` lists
  ``pyro_sparse_bnn.METHODS``; ``<!-- guides-table -->`` lists ``pyro_sparse_bnn.guides.GUIDES``.
  The results files and figures are copied into the site, under ``benchmarks/results/``.
* Maths, offline: MathJax 3 from the ``django-static-mathjax`` package (the docs extra) is copied
  into the site under ``assets/mathjax/`` and configured by ``assets/javascripts/mathjax.js``
  (:data:`MATHJAX_CONFIG`; ``mkdocs.yml`` loads both). It typesets ``pymdownx.arithmatex``'s
  ``\\(..\\)``/``\\[..\\]`` and the notebooks' ``$..$``/``$$..$$``; the CDN MathJax that
  mkdocs-jupyter writes into notebook pages is removed.

The file is also the Griffe extension :class:`DoctestFences` that mkdocstrings loads for the API
pages: docstrings are written for ``help()`` and doctest, and :func:`to_markdown` turns them into
Markdown. ``>>>`` examples are fenced as ``pycon`` code (left as text, Markdown reads ``d["w"]`` as
a link reference and runs the output lines together) and Sphinx roles such as ``:func:`fit``` or
``:meth:`to_arviz <FitResult.to_arviz>``` become code spans.

>>> to_markdown(">>> 1 + 1\\n2\\n\\nSee :func:`~psb.fit`.").splitlines()
['```pycon', '>>> 1 + 1', '2', '```', '', 'See `psb.fit`.']
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import math
import re
import statistics
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import griffe
import mkdocs.plugins
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "pyro_sparse_bnn"
METHOD_PAGES = ("vadam.md", "ivon.md", "sgmcmc.md", "mcmc.md", "compression.md")
"""Pages that document one inference method each, in nav order, when they exist."""
RESULTS = ROOT / "benchmarks" / "results"
SUMMARY_ROWS = 25
"""A results file with at most this many rows (and no seeds to average over) is its own summary."""
DETAIL_ROWS = 400
"""Up to this many rows are shown, collapsed, on the page; a longer file is only linked."""
SUMMARY_CELL = 40
"""Summary tables leave out columns with a cell longer than this (lists, nested records)."""
SEED_COLUMNS = ("seed", "data_seed", "split")
"""Row columns that name a repetition: rows differing only in these are averaged."""
MATHJAX_FILES = (
    "tex-mml-chtml.js",
    "input/tex/extensions/",
    "input/mml/",
    "output/chtml/",
    "ui/",
    "a11y/",
)
"""The part of MathJax's ``es5`` build that the site serves: the combined TeX/MathML-to-HTML
component, the TeX extensions it loads on demand, its fonts, menu and accessibility modules."""
MATHJAX_CONFIG = """\
// MathJax 3, served by the site itself (see docs/hooks/psb_docs.py).
window.MathJax = {
  tex: {
    inlineMath: [["\\\\(", "\\\\)"], ["$", "$"]],
    displayMath: [["\\\\[", "\\\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
  // Only the page content, and in it only arithmatex's output on the Markdown pages and the
  // Markdown cells and LaTeX outputs of the notebooks: a "$" elsewhere stays a dollar.
  startup: { elements: [".md-content"] },
  options: {
    ignoreHtmlClass: "md-typeset",
    processHtmlClass: "arithmatex|jp-RenderedMarkdown|jp-RenderedLatex",
  },
};
"""
_NOTEBOOK_MATHJAX = re.compile(
    r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S
)
"""The MathJax 2 block (CDN script and configuration) in mkdocs-jupyter's notebook pages."""

_ROLE = re.compile(r":(?:func|meth|class|mod|data|attr|obj|exc):`~?([^`<]+?)(?:\s*<[^>]*>)?`")


def _fence(text: str) -> str:
    """Wrap each run of lines that starts with ``>>>`` (up to a blank line) in a code fence."""
    out: list[str] = []
    indent = None  # the open example's indentation, None outside examples
    in_fence = False
    for line in text.splitlines():
        stripped = line.strip()
        if indent is not None and not stripped:
            out.append(f"{indent}```")
            indent = None
        elif indent is None and not in_fence and stripped.startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}```pycon")
        elif indent is None and stripped.startswith("```"):
            in_fence = not in_fence
        out.append(line)
    if indent is not None:
        out.append(f"{indent}```")
    return "\n".join(out)


def to_markdown(text: str) -> str:
    """``text`` with fenced doctest examples and Sphinx roles turned into code spans."""
    return _ROLE.sub(r"`\1`", _fence(text))


class DoctestFences(griffe.Extension):
    """Apply :func:`to_markdown` to the docstring of every documented object."""

    def on_object(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)


def _modules() -> list[str]:
    """Public modules of the package: those a public package names in its ``__all__``,
    recursively from ``pyro_sparse_bnn`` (internal helpers such as ``sites`` get no page)."""
    found, todo = [], [PACKAGE]
    while todo:
        module = importlib.import_module(todo.pop())
        for attr in getattr(module, "__all__", ()):
            value = getattr(module, attr)
            if isinstance(value, ModuleType) and value.__name__.startswith(f"{PACKAGE}."):
                found.append(value.__name__)
                todo.append(value.__name__)
    return sorted(set(found))


def _api_path(module: str) -> str:
    return "api/" + module.removeprefix(f"{PACKAGE}.").replace(".", "/") + ".md"


def _tutorials() -> list[Path]:
    return sorted((ROOT / "tutorials").glob("*.ipynb"))


def _nav_titles(nav: list) -> list[str]:
    return [next(iter(entry)) if isinstance(entry, dict) else entry for entry in nav]


def _nav_files(nav: Any) -> set[str]:
    """Every page path a nav (sub)tree names."""
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, dict):
        return set().union(*(_nav_files(v) for v in nav.values()))
    return set().union(*(_nav_files(v) for v in nav)) if nav else set()


def _notebook_title(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and source.startswith("# "):
            return source.splitlines()[0][2:].strip()
    return path.stem


def on_config(config: Any) -> Any:
    """Fill the nav sections whose content is generated."""
    docs = Path(config["docs_dir"])
    generated = {
        "API reference": [{"Overview": "api/index.md"}]
        + [{m.removeprefix(f"{PACKAGE}."): _api_path(m)} for m in _modules()],
        "Tutorials": [{_notebook_title(p): f"tutorials/{p.name}"} for p in _tutorials()],
        "Inference methods": [page for page in METHOD_PAGES if (docs / page).is_file()],
    }
    nav = [
        {title: generated[title]} if title in generated else entry
        for title, entry in zip(_nav_titles(config["nav"]), config["nav"], strict=True)
    ]
    nav = [
        entry
        for entry in nav
        if not (isinstance(entry, dict) and entry.get("Inference methods") == [])
    ]
    named = _nav_files(nav)
    more = sorted(
        str(p.relative_to(docs))
        for p in docs.rglob("*.md")
        if "hooks" not in p.parts and str(p.relative_to(docs)) not in named
    )
    config["nav"] = nav + ([{"More": more}] if more else [])
    return config


@mkdocs.plugins.event_priority(100)  # before mkdocs-jupyter turns notebooks into pages
def on_files(files: Files, config: Any) -> Files:
    """Add the API pages and the notebooks from ``tutorials/``."""
    modules = _modules()
    overview = [
        f"# API reference\n\n::: {PACKAGE}\n    options:\n      show_submodules: false\n",
        "## Modules\n",
    ]
    overview += [f"- [`{m}`]({_api_path(m).removeprefix('api/')})" for m in modules]
    files.append(File.generated(config, "api/index.md", content="\n".join(overview) + "\n"))
    for module in modules:
        content = f"# `{module}`\n\n::: {module}\n"
        files.append(File.generated(config, _api_path(module), content=content))
    for notebook in _tutorials():  # a real File (mkdocs-jupyter reads it from src_dir)
        path = f"tutorials/{notebook.name}"
        files.append(File(path, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    for path in sorted(RESULTS.glob("*.json")) + sorted(RESULTS.glob("*.png")):
        uri = f"benchmarks/results/{path.name}"
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    es5 = mathjax_dir()
    for path in sorted(es5.rglob("*")):
        relative = path.relative_to(es5).as_posix()
        if path.is_file() and relative.startswith(MATHJAX_FILES):
            uri = f"assets/mathjax/{relative}"
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    notice = str(es5.parent / "LICENSE")  # Apache-2.0
    files.append(File.generated(config, "assets/mathjax/LICENSE", abs_src_path=notice))
    files.append(File.generated(config, "assets/javascripts/mathjax.js", content=MATHJAX_CONFIG))
    return files


def mathjax_dir() -> Path:
    """MathJax 3's ``es5`` build, shipped by the ``django-static-mathjax`` package."""
    spec = importlib.util.find_spec("mathjax")
    for location in spec.submodule_search_locations if spec else ():
        es5 = Path(location) / "static" / "mathjax" / "es5"
        if (es5 / "tex-mml-chtml.js").is_file():
            return es5
    raise RuntimeError(
        "the docs serve MathJax from the django-static-mathjax package: pip install -e '.[docs]'"
    )


def on_post_page(output: str, page: Any, config: Any) -> str:
    """Drop the CDN MathJax 2 that mkdocs-jupyter puts in notebook pages (the site's own
    MathJax, loaded on every page, typesets them)."""
    return _NOTEBOOK_MATHJAX.sub("", output)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, dict | list):
        text = json.dumps(value, separators=(", ", ": "), default=str)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _is_seed(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _aggregate(rows: list[dict], seed: str) -> list[dict]:
    """Rows that differ only in ``seed`` (and in numbers) merged into one: each numeric column
    becomes ``mean ± sd`` over the seeds (sample standard deviation), other columns are dropped
    unless they identify the group (text or booleans)."""
    columns = list(dict.fromkeys(key for row in rows for key in row if key != seed))
    numeric = [c for c in columns if all(_is_number(row.get(c)) for row in rows if c in row)]
    keys = [c for c in columns if c not in numeric and all(_is_label(r.get(c)) for r in rows)]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(str(row.get(k)) for k in keys), []).append(row)
    merged = []
    for members in groups.values():
        out = {k: members[0].get(k) for k in keys}
        out[f"{seed}s"] = len(members)
        for column in numeric:
            values = [float(m[column]) for m in members if m.get(column) is not None]
            if values:
                out[column] = _mean_sd(values)
        merged.append(out)
    return merged


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _is_label(value: Any) -> bool:
    return value is None or isinstance(value, str | bool)


def _mean_sd(values: list[float]) -> str:
    """``mean ± sd`` with 4 significant digits for the mean and 2 for the deviation.

    >>> _mean_sd([1.0, 2.0, 3.0])
    '2 ± 1'
    """
    mean = statistics.fmean(values)
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return _cell(mean)
    return f"{mean:.4g} ± {statistics.stdev(values):.2g}"


def _short(rows: list[dict]) -> list[dict]:
    """``rows`` without the columns that have a long cell or no value at all."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    keep = [
        c
        for c in columns
        if any(row.get(c) is not None for row in rows)
        and all(len(_cell(row.get(c))) <= SUMMARY_CELL for row in rows)
    ]
    return [{c: row[c] for c in keep if c in row} for row in rows]


def _drop(rows: list[dict], column: str | None) -> list[dict]:
    return [{k: v for k, v in row.items() if k != column} for row in rows]


def summary_tables(payload: dict) -> list[tuple[str, list[dict]]]:
    """The short tables that summarise one results file, each with a caption.

    In order of preference: the summary records the script stored in ``meta`` (``summary``,
    ``pass_rates``); the rows it marked as summaries (``kind``/``experiment`` naming a summary, a
    seed column reading ``mean``); the rows averaged over their seeds; the rows themselves when
    there are at most :data:`SUMMARY_ROWS`. Rows are split by ``kind``/``experiment`` first.
    """
    meta, rows = payload.get("meta", {}), payload.get("rows", [])
    for key in ("summary", "pass_rates"):
        value = meta.get(key)
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            if len({str(v.get("kind")) for v in value}) == 1:
                value = _drop(value, "kind")  # one kind: the caption says what the rows are
            return [(f"Summary stored by the script (`meta.{key}`)", value)]
    kind = next((k for k in ("kind", "experiment") if any(k in row for row in rows)), None)
    parts: dict[str, list[dict]] = {}
    for row in rows:
        parts.setdefault(str(row.get(kind, "")) if kind else "", []).append(row)
    marked = {
        name: part
        for name, part in parts.items()
        if re.search(r"summary|best|mean", name) and len(part) <= SUMMARY_ROWS
    }
    if marked:
        return [(f"Rows with `{kind}` = `{name}`", _drop(p, kind)) for name, p in marked.items()]
    tables = []
    for name, part in parts.items():
        part = _drop(part, kind)
        mean_rows = [r for r in part if any(r.get(c) == "mean" for c in SEED_COLUMNS)]
        seed = next(
            (c for c in SEED_COLUMNS if len({r[c] for r in part if _is_seed(r.get(c))}) > 1), None
        )
        if mean_rows:
            table, what = mean_rows, "the rows the script averaged"
        elif seed:
            table = _aggregate([r for r in part if _is_seed(r.get(seed))], seed)
            what = f"mean ± sd over the {seed}s"
        else:
            table, what = part, "all rows"
        if len(table) <= SUMMARY_ROWS:
            caption = f"Rows with `{kind}` = `{name}`: {what}" if kind else what
            tables.append((caption[0].upper() + caption[1:], table))
    return tables


def _description(command: str) -> str:
    """The first sentence of the docstring of the benchmark script that ``command`` runs."""
    script = next((w for w in command.split() if w.endswith(".py")), None)
    path = ROOT / "benchmarks" / Path(script).name if script else None
    if path is None or not path.is_file():
        return ""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    paragraph = " ".join(doc.split("\n\n")[0].split())
    end = re.search(r"(?<!et al)\.\s+(?=[A-Z])", paragraph)
    return paragraph[: end.start() + 1] if end else paragraph


def _figures(results: Path) -> dict[str, list[Path]]:
    """Each PNG in ``results`` under the results file whose name is the longest prefix of its
    name (``""`` for a figure that belongs to no results file)."""
    stems = sorted((p.stem for p in results.glob("*.json")), key=len, reverse=True)
    figures: dict[str, list[Path]] = {}
    for png in sorted(results.glob("*.png")):
        owner = next((s for s in stems if png.stem == s or png.stem.startswith(s + "_")), "")
        figures.setdefault(owner, []).append(png)
    return figures


def _folded(title: str, body: str, kind: str = "info") -> str:
    return f'??? {kind} "{title}"\n\n' + textwrap.indent(body, "    ") + "\n"


def benchmark_tables(results: Path = RESULTS) -> str:
    """Markdown: an index of the results files, then for each one its description, command and
    link, its summary tables (:func:`summary_tables`), its figures, and, collapsed, its settings
    and every row (or, past :data:`DETAIL_ROWS` rows, its columns and the link)."""
    paths = sorted(results.glob("*.json"))
    if not paths:
        return "No results yet: run a script in `benchmarks/`."
    figures = _figures(results)
    index = ["| results | what it measures | rows |", "|---|---|---|"]
    sections = []
    for path in paths:
        payload = json.loads(path.read_text())
        meta, rows = payload.get("meta", {}), payload.get("rows", [])
        description = _description(meta.get("command", ""))
        index.append(f"| [{path.stem}](#{path.stem}) | {_cell(description)} | {len(rows)} |")
        link = f"[{path.name}](benchmarks/results/{path.name})"
        lines = [f"## {path.stem}", ""]
        lines += [description, ""] if description else []
        lines += [f"`{meta.get('command', '')}` · results: {link}", ""]
        whole = False  # whether a summary table is the whole file
        for caption, table in summary_tables(payload):
            lines += [f"{caption}:", "", _table(_short(table)), ""]
            whole |= _short(table) == rows
        for png in figures.get(path.stem, []):
            lines += [f"![{png.stem}](benchmarks/results/{png.name})", ""]
        settings = [
            f"- **{key}**: {_cell(value)}" for key, value in meta.items() if key != "command"
        ]
        lines.append(_folded("Settings", "\n".join(settings) or "(none)", "note"))
        if not rows:
            lines.append("(no rows)\n")
        elif whole:
            pass
        elif len(rows) <= DETAIL_ROWS:
            lines.append(_folded(f"All {len(rows)} rows", _table(rows)))
        else:
            columns = ", ".join(f"`{c}`" for c in dict.fromkeys(k for r in rows for k in r))
            lines.append(f"All {len(rows)} rows are in {link}; their columns: {columns}.\n")
        sections.append("\n".join(lines))
    others = [f"![{png.stem}](benchmarks/results/{png.name})" for png in figures.get("", [])]
    if others:
        sections.append("## Other figures\n\n" + "\n\n".join(others) + "\n")
    return "\n".join(index) + "\n\n" + "\n".join(sections)


def _registry_table(registry: dict, kind: str) -> str:
    lines = [f"| {kind} | function | summary |", "|---|---|---|"]
    for name, entry in registry.items():
        function = getattr(entry, "function", entry)  # a ``METHODS`` record or a function
        fixed = ", ".join(f"{k}={v!r}" for k, v in getattr(entry, "fixed", {}).items())
        doc = inspect.getdoc(function) or ""
        summary = to_markdown(doc.split("\n\n")[0]).replace("\n", " ")
        name_in_module = "" if "<locals>" in function.__qualname__ else f".{function.__qualname__}"
        where = f"`{function.__module__}{name_in_module}({fixed})`"
        lines.append(f"| `{name}` | {where} | {_cell(summary)} |")
    return "\n".join(lines)


def on_page_markdown(source: str, page: Any, config: Any, files: Files) -> str:
    """Replace the markers with tables built from the results files and the registries."""
    if "<!-- benchmark-tables -->" in source:
        source = source.replace("<!-- benchmark-tables -->", benchmark_tables())
    if "<!-- methods-table -->" in source or "<!-- guides-table -->" in source:
        import pyro_sparse_bnn as psb

        source = source.replace("<!-- methods-table -->", _registry_table(psb.METHODS, "method"))
        source = source.replace(
            "<!-- guides-table -->", _registry_table(psb.guides.GUIDES, "guide")
        )
    return source
