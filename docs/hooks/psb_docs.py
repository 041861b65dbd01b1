"""MkDocs hook: pages generated at build time from the code and the benchmark results.

* ``API reference``: one page per public module of ``pyro_sparse_bnn`` (mkdocstrings), found by
  walking the package, so a new module appears without editing ``mkdocs.yml``.
* ``Tutorials``: the notebooks in ``tutorials/`` (outside ``docs/``), rendered by mkdocs-jupyter.
* ``Inference methods``: the method pages among :data:`METHOD_PAGES` that exist; pages in ``docs/``
  that no nav entry names are listed under ``More``.
* Markers in pages: ``<!-- benchmark-tables -->`` becomes one table per
  ``benchmarks/results/*.json``; ``<!-- methods-table -->`` lists ``pyro_sparse_bnn.METHODS``;
  ``<!-- guides-table -->`` lists ``pyro_sparse_bnn.guides.GUIDES``.

The file is also the Griffe extension :class:`DoctestFences` that mkdocstrings loads for the API
pages: docstrings are written for ``help()`` and doctest, and :func:`to_markdown` turns them into
Markdown. ``>>>`` examples are fenced as ``pycon`` code (left as text, Markdown reads ``d["w"]`` as
a link reference and runs the output lines together) and Sphinx roles such as ``:func:`fit``` or
``:meth:`to_arviz <FitResult.to_arviz>``` become code spans.

>>> to_markdown(">>> 1 + 1\\n2\\n\\nSee :func:`~psb.fit`.").splitlines()
['```pycon', '>>> 1 + 1', '2', '```', '', 'See `psb.fit`.']
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import griffe
import mkdocs.plugins
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "pyro_sparse_bnn"
METHOD_PAGES = ("vadam.md", "sgmcmc.md", "mcmc.md", "compression.md")
"""Pages that document one inference method each, in nav order, when they exist."""
FOLD_ROWS = 40
"""Benchmark tables longer than this are collapsed on the page."""

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
    return files


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


def benchmark_tables(results: Path = ROOT / "benchmarks" / "results") -> str:
    """Markdown: for every results file, its command, settings and rows."""
    sections = []
    for path in sorted(results.glob("*.json")):
        payload = json.loads(path.read_text())
        meta, rows = payload.get("meta", {}), payload.get("rows", [])
        settings = {k: v for k, v in meta.items() if k not in ("command", "packages")}
        lines = [f"## {path.stem}", "", f"`{meta.get('command', '')}`", ""]
        lines += [f"- **{key}**: {_cell(value)}" for key, value in settings.items()]
        if meta.get("packages"):
            lines.append(f"- **packages**: {_cell(meta['packages'])}")
        table = _table(rows) if rows else "(no rows)"
        if len(rows) > FOLD_ROWS:  # a collapsed admonition: the page stays readable
            table = f'??? info "{len(rows)} rows"\n\n' + textwrap.indent(table, "    ")
        lines += ["", table, ""]
        sections.append("\n".join(lines))
    return "\n".join(sections) if sections else "No results yet: run a script in `benchmarks/`."


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
