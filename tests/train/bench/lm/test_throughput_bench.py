"""The throughput bench's configuration (its runs are GPU benchmarks)."""

import pytest

from holojax.train.bench.common import optimizer_of
from holojax.train.bench.lm.throughput import ThroughputConfig


def test_optimizer_specs():
  assert ThroughputConfig().optimizers == ("adamw",)
  assert optimizer_of("turbo_adam@xla:flat") == (
      "turbo_adam", {"implementation": "xla", "tree_layout": "flat"})
  for bad in (("nope",), ("turbo_adam:stacked",), ()):
    with pytest.raises(ValueError, match="optimizers"):
      ThroughputConfig(optimizers=bad)
