import dataclasses

import pytest

from holojax.train import TrainConfig

# A tiny, fast run: the tiny model, 1 MB of the stdlib corpus.
TINY_RUN = TrainConfig(model="tiny", steps=8, batch_size=8, seq_len=32, eval_every=4,
                       eval_batches=2, log_every=1, warmup_steps=2, learning_rate=3e-3,
                       corpus_max_bytes=1_000_000, progress=False)


def _make(**kw):
  return dataclasses.replace(TINY_RUN, **kw)


@pytest.fixture
def tiny_run():
  return _make


@pytest.fixture(scope="module")
def tiny_run_module():
  return _make
