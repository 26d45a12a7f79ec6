"""holojax: holographic and compressed-state ML systems in JAX/Flax.

Subpackages: ``holojax.optim`` (optax transformations), ``holojax.nn`` (Flax
NNX layers), ``holojax.models`` (whole models), ``holojax.data`` (corpora and
synthetic tasks), ``holojax.kernels`` (Pallas kernels), ``holojax.train``
(training loop, benchmarks, CLI).
"""

__version__ = "0.1.0"
