"""holojax: holographic and compressed-state ML systems in JAX/Flax.

Subpackages: ``holojax.optim`` (optax transformations), ``holojax.nn`` (Flax
NNX layers), ``holojax.models`` (whole models), ``holojax.data`` (corpora and
synthetic tasks), ``holojax.kernels`` (Pallas kernels), ``holojax.train``
(training loop, benchmarks, CLI).
"""

__version__ = "0.1.0"

# Where holojax lives and how a fresh machine installs it: the one place these
# are named. The notebooks' Colab badges and install cells carry them literally
# (they run before holojax is importable); tests/test_notebooks.py checks they
# match. No public address is known yet: these are placeholders.
REPO = "holojax/holojax"                            # GitHub owner/name
INSTALL = "git+https://github.com/holojax/holojax"  # what `pip install` is given
