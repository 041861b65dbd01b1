"""The progress bar of every training loop: tqdm's notebook widget in a Jupyter kernel that has
ipywidgets, the plain text bar everywhere else.

``tqdm.auto`` makes the same choice but warns (``TqdmWarning: IProgress not found``) in every
notebook without ipywidgets, where the text bar works perfectly well. Pyro imports ``tqdm.auto``
too, so this module imports it first with that one warning silenced: import it before Pyro.

>>> bar = progress_bar(total=3, disable=True)
>>> type(bar).__module__
'tqdm.std'
>>> bar.close()
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

from tqdm import TqdmWarning

with warnings.catch_warnings():  # imported by Pyro anyway: say nothing when ipywidgets is absent
    warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)
    import tqdm.auto  # noqa: F401

__all__ = ["in_notebook", "progress_bar"]


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel that can show tqdm's widget (``tqdm.autonotebook``'s
    test) and ipywidgets imports.

    >>> in_notebook()
    False
    """
    if "ipykernel.zmqshell" in sys.modules:
        if any(k == "QT_API" or k.startswith("SPYDER") for k in os.environ):
            return False  # qtconsole, Spyder: text only
        ipython = sys.modules.get("IPython")
        shell = getattr(ipython, "get_ipython", lambda: None)()
        name = type(shell).__name__.lower()
        if "qt" in name or "spyder" in name:
            return False
    elif "IPython.utils._process_emscripten" not in sys.modules:  # JupyterLite
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def progress_bar(*args: Any, **kwargs: Any) -> Any:
    """A ``tqdm`` bar (same arguments): the notebook widget where :func:`in_notebook`, else the
    text bar; never a warning about a missing ipywidgets.

    >>> with progress_bar(range(2), disable=True) as bar:
    ...     list(bar)
    [0, 1]
    """
    if in_notebook():
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm(*args, **kwargs)
