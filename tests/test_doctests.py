"""Every docstring example in the package runs and shows what it says.

Each module's examples start from seed 0 and an empty Pyro param store, so their printed numbers
do not depend on which module ran before.
"""

import doctest
import importlib
import pkgutil

import numpy as np
import pyro
import pytest
import torch

import pyro_sparse_bnn

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(pyro_sparse_bnn.__path__, "pyro_sparse_bnn.")
)
FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", ["pyro_sparse_bnn", *MODULES])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    numpy_state = np.random.get_state()
    pyro.clear_param_store()
    try:
        with torch.random.fork_rng():
            pyro.set_rng_seed(0)
            result = doctest.testmod(module, optionflags=FLAGS, report=False)
    finally:
        np.random.set_state(numpy_state)
        pyro.clear_param_store()
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def count_examples(name: str) -> int:
    tests = doctest.DocTestFinder().find(importlib.import_module(name))
    return sum(len(test.examples) for test in tests)


def has_public_names(name: str) -> bool:
    module = importlib.import_module(name)
    return any(
        not attr.startswith("_") and getattr(value, "__module__", name) == name
        for attr, value in vars(module).items()
        if callable(value)
    )


def test_every_module_with_a_public_name_has_examples():
    """A module without one runnable example cannot be learnt from its ``help``; modules of
    private helpers only (``infer.sgmcmc.run``, ...) are exempt."""
    bare = [name for name in MODULES if has_public_names(name) and count_examples(name) == 0]
    assert bare == []
