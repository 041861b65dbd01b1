"""Download files into a cache: mirrors tried in order, MD5-checked, written atomically.

* :func:`download` fetches one file from the first URL that works, with a timeout, a tqdm
  progress bar and an optional MD5 check; a file already at the target (with the right MD5) is
  used as it is, without any request.
* :func:`cache_dir` is the package's cache directory (``$PSBNN_DATA``, else
  ``$XDG_CACHE_HOME/pyro_sparse_bnn``, else ``~/.cache/pyro_sparse_bnn``).
* :func:`md5sum` is the MD5 hex digest of a file.

The file is written through :func:`pyro_sparse_bnn.io.atomic_path`: an interrupted, truncated or
corrupted transfer never leaves a file at the target path. Nothing is downloaded at import;
``urllib`` and ``tqdm`` are imported on first use.

>>> import pathlib, tempfile
>>> path = pathlib.Path(tempfile.mkdtemp()) / "hello.txt"
>>> _ = path.write_bytes(b"hello")
>>> md5sum(path)
'5d41402abc4b2a76b9719d911017c592'
>>> download(["https://example.invalid/hello.txt"], path, md5=md5sum(path)) == path  # cached
True
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

from pyro_sparse_bnn.io import atomic_path

__all__ = ["DownloadError", "cache_dir", "download", "md5sum"]

_CHUNK = 1 << 16
_MD5 = re.compile(r"[0-9a-f]{32}")


class DownloadError(OSError):
    """No URL delivered the file (network error, HTTP error, timeout or truncated transfer).

    ``failures`` holds one ``(url, reason)`` pair per URL tried, in order.

    >>> err = DownloadError([("https://a.invalid/f", "HTTP 404 Not Found")])
    >>> print(err)
    download failed from every URL tried:
      https://a.invalid/f: HTTP 404 Not Found
    """

    def __init__(self, failures: Sequence[tuple[str, str]]) -> None:
        self.failures = list(failures)
        lines = "\n".join(f"  {url}: {reason}" for url, reason in self.failures)
        super().__init__(f"download failed from every URL tried:\n{lines}")


class _TransferError(Exception):
    """A transfer that ended early or delivered bytes with the wrong MD5."""


class _ChecksumError(_TransferError):
    pass


def md5sum(path: str | os.PathLike[str]) -> str:
    """The MD5 hex digest of the file at ``path``, read in chunks.

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "empty"
    >>> _ = path.write_bytes(b"")
    >>> md5sum(path)
    'd41d8cd98f00b204e9800998ecf8427e'
    """
    hasher = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def cache_dir(name: str | None = None) -> Path:
    """The package's cache directory, with ``name`` appended; nothing is created.

    ``$PSBNN_DATA`` if set, else ``$XDG_CACHE_HOME/pyro_sparse_bnn`` (when that is an absolute
    path), else ``~/.cache/pyro_sparse_bnn``. Empty variables count as unset.

    >>> cache_dir("mnist").parts[-1]
    'mnist'
    """
    if name is not None and (not isinstance(name, str) or not name or os.sep in name):
        raise ValueError(f"name must be a non-empty directory name, got {name!r}")
    data = os.environ.get("PSBNN_DATA")
    xdg = os.environ.get("XDG_CACHE_HOME")
    if data:
        base = Path(data).expanduser()
    elif xdg and os.path.isabs(xdg):
        base = Path(xdg) / "pyro_sparse_bnn"
    else:
        base = Path.home() / ".cache" / "pyro_sparse_bnn"
    return base if name is None else base / name


def _check_urls(urls: object, name: str = "urls") -> tuple[str, ...]:
    """``urls`` as a non-empty tuple of http(s) URLs; a TypeError/ValueError naming ``name``."""
    if isinstance(urls, str | bytes) or not isinstance(urls, Sequence):
        raise TypeError(f"{name} must be a sequence of URL strings, got {urls!r}")
    if not urls:
        raise ValueError(f"{name} must hold at least one URL")
    for url in urls:
        if not isinstance(url, str):
            raise TypeError(f"{name} must hold URL strings, got {url!r}")
        if not url.lower().startswith(("http://", "https://")):
            raise ValueError(f"{name} must hold http:// or https:// URLs, got {url!r}")
    return tuple(urls)


def _check_timeout(timeout: object) -> float:
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def _check_flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _reason(err: BaseException, timeout: float) -> str:
    """One line saying why a URL failed."""
    from urllib.error import HTTPError, URLError

    if isinstance(err, HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, URLError):
        err = err.reason if isinstance(err.reason, BaseException) else err
    if isinstance(err, TimeoutError):
        return f"no data for {timeout:g} s (timeout)"
    return str(err) or type(err).__name__


def _fetch(url: str, tmp: Path, name: str, md5: str | None, timeout: float, progress: bool) -> None:
    """Stream ``url`` into ``tmp`` (truncated first); ``_TransferError`` if short or MD5 differs."""
    from urllib.request import Request, urlopen

    from tqdm.auto import tqdm

    from pyro_sparse_bnn._version import __version__

    request = Request(url, headers={"User-Agent": f"pyro_sparse_bnn/{__version__}"})
    with urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
        length = response.headers.get("Content-Length", "")
        total = int(length) if length.strip().isdigit() else None
        hasher, received = hashlib.md5(usedforsecurity=False), 0
        bar = tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=name,
            disable=not progress,
        )
        with bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                hasher.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise _TransferError(f"transfer ended after {received} of {total} bytes")
    if md5 is not None and hasher.hexdigest() != md5:
        raise _ChecksumError(f"MD5 {hasher.hexdigest()}, expected {md5}")


def download(
    urls: Sequence[str],
    path: str | os.PathLike[str],
    *,
    md5: str | None = None,
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    """Download a file to ``path`` from the first of ``urls`` that delivers it; return ``path``.

    If ``path`` already holds a file (whose MD5 is ``md5``, when given) nothing is requested.
    Otherwise each URL is tried in turn (its parent directories are created): the bytes stream
    into a temporary file beside ``path`` that is moved onto ``path`` only once complete (the
    ``Content-Length`` is checked) and, with ``md5``, matching; any failure deletes it and moves on
    to the next URL. ``timeout`` is how many seconds to wait for a connection or for data;
    ``progress`` shows a tqdm bar.

    Raises ``ValueError`` if a URL delivered bytes with the wrong MD5 and no URL delivered the
    right ones (no file is left at ``path``), and :class:`DownloadError` (an ``OSError``) naming
    every URL and its failure if none delivered the file.

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "sub" / "data.bin"
    >>> download(["ftp://example.invalid/data.bin"], path)
    Traceback (most recent call last):
    ValueError: urls must hold http:// or https:// URLs, got 'ftp://example.invalid/data.bin'
    """
    urls = _check_urls(urls)
    if md5 is not None and (not isinstance(md5, str) or not _MD5.fullmatch(md5.lower())):
        raise ValueError(f"md5 must be a 32-digit hex string or None, got {md5!r}")
    md5 = None if md5 is None else md5.lower()
    timeout = _check_timeout(timeout)
    _check_flag(progress, "progress")
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike, got {path!r}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path {str(path)!r} is a directory, expected a file path")
    if path.is_file() and (md5 is None or md5sum(path) == md5):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)

    from http.client import HTTPException

    failures: list[tuple[str, str]] = []
    bad_checksum = False
    with atomic_path(path) as tmp:  # moved onto path only if a URL delivers; deleted otherwise
        for url in urls:
            try:
                _fetch(url, tmp, path.name, md5, timeout, progress)
            except _ChecksumError as err:
                bad_checksum = True
                failures.append((url, str(err)))
            except (_TransferError, OSError, HTTPException) as err:
                failures.append((url, _reason(err, timeout)))
            else:
                break
        else:
            if bad_checksum:
                lines = "\n".join(f"  {url}: {reason}" for url, reason in failures)
                raise ValueError(
                    f"checksum mismatch: no URL delivered {path.name} with MD5 {md5} (nothing "
                    f"was written to {path}):\n{lines}"
                )
            raise DownloadError(failures)
    return path
