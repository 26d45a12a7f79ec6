"""Every docstring example in the library runs and prints what it shows."""

import doctest
import importlib
import pkgutil

import pytest

import holojax
import holojax.kernels
import holojax.train

# holojax.kernels and holojax.train live in their own folders (package-dir).
PACKAGES = (holojax, holojax.kernels, holojax.train)


def _modules():
  for pkg in PACKAGES:
    yield pkg.__name__
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
      if (".bench." in info.name and not info.name.endswith(".bench.common")
          or info.name.endswith(("cli", "__main__"))):
        continue  # benchmarks and the CLI are run by their own tests
      yield info.name


@pytest.mark.parametrize("name", sorted(set(_modules())))
def test_docstring_examples(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS
                           | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0, f"{result.failed} failing example(s) in {name}"
