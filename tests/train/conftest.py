import dataclasses
import pathlib

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


def damage_checkpoint(ckpt_dir, step: int, how: str) -> pathlib.Path:
  """Damages the largest data file of checkpoint ``step``: ``flip`` one bit,
  ``truncate`` to a third, or ``stub`` (10 bytes left). Returns the file."""
  files = [p for p in (pathlib.Path(ckpt_dir) / str(step) / "state").rglob("*") if p.is_file()]
  path = max(files, key=lambda p: p.stat().st_size)
  data = bytearray(path.read_bytes())
  if how == "flip":
    data[len(data) // 2] ^= 0x10
  elif how == "truncate":
    data = data[: len(data) // 3]
  else:
    data = data[:10]
  path.write_bytes(bytes(data))
  return path


@pytest.fixture
def damage():
  """:func:`damage_checkpoint`."""
  return damage_checkpoint
