"""Execute the tutorials and store them with their outputs, for the documentation site.

    python tutorials/execute.py                  # every notebook, full length (the site's)
    python tutorials/execute.py 03_compress_mnist  # one notebook
    python tutorials/execute.py --check          # list notebooks whose code changed since

Each notebook runs top to bottom in a fresh kernel on this interpreter (``OMP_NUM_THREADS=1``,
working directory ``tutorials/``) and is written back with its outputs. Its metadata records
:func:`code_sha256`, the hash of its code cells' sources: ``tests/test_tutorials.py`` fails when a
notebook's code changed without re-executing it. Edits to Markdown cells need no re-execution.
Outputs are cleaned so that they hold no machine-specific paths or timing metadata.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import site
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
METADATA_KEY = "pyro_sparse_bnn"
"""Notebook metadata key: ``{"code_sha256": ..., "fast": ...}``."""
FORBIDDEN = ("TqdmWarning", "Shape validation failed", "Traceback")
"""Text that must not appear in a stored output (warnings the tutorials must not trigger)."""


def code_sha256(notebook) -> str:
    """SHA-256 of the notebook's code cells' sources, in order (Markdown cells do not count)."""
    sources = [cell["source"] for cell in notebook["cells"] if cell["cell_type"] == "code"]
    sources = ["".join(s) if isinstance(s, list) else s for s in sources]
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()


def is_current(notebook) -> bool:
    """Whether the stored outputs were produced by the notebook's current code."""
    recorded = notebook.get("metadata", {}).get(METADATA_KEY, {}).get("code_sha256")
    return recorded == code_sha256(notebook)


def output_text(notebook) -> str:
    """All text of the stored outputs (streams, text representations, error tracebacks)."""
    parts = []
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            parts.append("".join(output.get("text", "")))
            parts += ["".join(v) for k, v in output.get("data", {}).items() if k.startswith("text")]
            parts += output.get("traceback", [])
    return "\n".join(parts)


def _prefixes() -> list[tuple[str, str]]:
    """Machine-specific path prefixes and what replaces them in outputs (longest first)."""
    pairs = {str(ROOT): "<repository>", sys.prefix: "<python>", sys.base_prefix: "<python>"}
    pairs.update({p: "<site-packages>" for p in site.getsitepackages()})
    return sorted(pairs.items(), key=lambda pair: -len(pair[0]))


def clean(notebook) -> None:
    """Strip execution timings and widget state, and replace local paths in the outputs."""
    notebook.metadata.pop("widgets", None)
    prefixes = _prefixes()

    def scrub(text: str) -> str:
        for prefix, name in prefixes:
            text = text.replace(prefix, name)
        return text

    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        for output in cell.get("outputs", []):
            if "text" in output:
                output["text"] = scrub("".join(output["text"]))
            for mime, value in output.get("data", {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    output["data"][mime] = scrub(value)


def execute(path: Path, *, fast: bool = False, timeout: int = 3600, out: Path | None = None):
    """Run ``path`` in a fresh kernel and write it, with outputs, to ``out`` (default: in place)."""
    import nbclient
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    # The kernel spec starts "python": put this interpreter first on PATH so the kernel is it.
    path_var = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": path_var}
    env.pop("PSBNN_FAST", None)
    if fast:
        env["PSBNN_FAST"] = "1"
    client = nbclient.NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute(env=env)
    clean(notebook)
    notebook.metadata[METADATA_KEY] = {"code_sha256": code_sha256(notebook), "fast": fast}
    nbformat.validate(notebook)
    nbformat.write(notebook, out or path)
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebook stems (default: all of tutorials/)")
    parser.add_argument("--fast", action="store_true", help="PSBNN_FAST=1: short training")
    parser.add_argument("--check", action="store_true", help="only list stale notebooks")
    parser.add_argument("--output-dir", type=Path, help="write there instead of in place")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = sorted(HERE.glob("*.ipynb"))
    if args.names:
        wanted = {name.removesuffix(".ipynb") for name in args.names}
        paths = [p for p in paths if p.stem in wanted]
        if len(paths) != len(wanted):
            parser.error(f"unknown notebook among {sorted(wanted)}")
    if args.check:
        stale = [p.name for p in paths if not is_current(json.loads(p.read_text()))]
        print("\n".join(stale) if stale else "all tutorials are current")
        return 1 if stale else 0
    status = 0
    for path in paths:
        out = args.output_dir / path.name if args.output_dir else None
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            notebook = execute(path, fast=args.fast, timeout=args.timeout, out=out)
        except Exception as error:  # a failing cell: report it, keep the stored notebook
            print(f"{path.name}: FAILED, not written\n{error}", flush=True)
            status = 1
            continue
        found = [text for text in FORBIDDEN if re.search(text, output_text(notebook))]
        print(f"{path.name}: {time.perf_counter() - start:.0f} s", flush=True)
        if found:
            print(f"  its outputs contain {found}: fix the cause and re-execute", flush=True)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
