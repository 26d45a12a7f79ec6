"""A real-text corpus with no download: byte tokens, file-level split, packed batches.

The default corpus is the source tree of the running Python's standard
library: tens of megabytes of real text that every machine has. Any file or
directory can be used instead.

Batches are a pure function of ``(seed, batch index)``, so a data position is
one integer: a resumed run asks for batch ``k`` and gets exactly the batch an
uninterrupted run would have seen.

Example::

  >>> corpus = load_corpus(max_bytes=2_000_000)
  >>> corpus.vocab_size
  256
  >>> ds = PackedBatches(corpus.train, seq_len=64, batch_size=4, seed=0)
  >>> ds.batch(0).shape
  (4, 65)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sysconfig
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

VOCAB_SIZE = 256  # byte-level tokenizer
SEPARATOR = 0  # byte put between files (NUL never occurs in text files)

TEXT_SUFFIXES = (".py", ".txt", ".md", ".rst", ".c", ".h", ".json", ".toml", ".cfg",
                 ".ini", ".html", ".css", ".js", ".yaml", ".yml", ".csv", ".tex")


def encode(text: str) -> np.ndarray:
  """Text -> uint8 byte tokens (UTF-8)."""
  return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


def decode(tokens: Iterable[int]) -> str:
  """Byte tokens -> text; invalid UTF-8 sequences become U+FFFD."""
  return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")


def default_corpus_path() -> Path:
  """The running Python's standard-library source directory."""
  return Path(sysconfig.get_paths()["stdlib"])


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Byte tokens of a corpus split by file into train and validation.

  Attributes:
    train: uint8 [N_train] tokens of the training files, NUL-separated.
    val: uint8 [N_val] tokens of the validation files.
    train_files / val_files: how many files went to each side.
    source: the path the corpus was read from.
  """
  train: np.ndarray
  val: np.ndarray
  train_files: int
  val_files: int
  source: str
  vocab_size: int = VOCAB_SIZE


def _list_files(root: Path) -> list[Path]:
  if root.is_file():
    return [root]
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    # Third-party packages differ between machines: leave them out.
    dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__"))
    for name in sorted(filenames):
      if name.endswith(TEXT_SUFFIXES):
        files.append(Path(dirpath) / name)
  return files


def _is_val(rel_path: str, val_fraction: float) -> bool:
  """Deterministic, machine-independent file-level split by path hash."""
  h = int.from_bytes(hashlib.sha256(rel_path.encode()).digest()[:8], "little")
  return (h % 1_000_000) < val_fraction * 1_000_000


def load_corpus(path: str | os.PathLike | None = None, *, val_fraction: float = 0.05,
                max_bytes: int | None = None) -> Corpus:
  """Reads a text corpus into byte tokens with a file-level train/val split.

  Args:
    path: a text file or a directory (walked recursively for text files:
      ``TEXT_SUFFIXES``). ``None`` means the standard-library source tree.
    val_fraction: fraction of files (by a hash of their relative path) that
      go to validation. With a single file, the last ``val_fraction`` of its
      bytes is the validation split.
    max_bytes: stop reading once this many bytes were read (files are read
      in sorted order, so the result is still deterministic).

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: no readable text, or a split that would be empty.
  """
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
  root = Path(path) if path is not None else default_corpus_path()
  if not root.exists():
    raise FileNotFoundError(f"corpus path {str(root)!r} does not exist")
  files = _list_files(root)
  train_parts: list[bytes] = []
  val_parts: list[bytes] = []
  total = 0
  for f in files:
    try:
      data = f.read_bytes()
      data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
      continue  # unreadable or binary: not text
    if bytes([SEPARATOR]) in data:
      continue  # NUL bytes: binary, and NUL separates files
    if not data.strip():
      continue
    rel = f.name if root.is_file() else str(f.relative_to(root))
    (val_parts if _is_val(rel, val_fraction) else train_parts).append(data)
    total += len(data)
    if max_bytes is not None and total >= max_bytes:
      break
  if not train_parts and not val_parts:
    raise ValueError(
        f"corpus {str(root)!r} has no readable UTF-8 text files without NUL bytes (looked for "
        f"{TEXT_SUFFIXES}); pass --corpus PATH to a text file or a directory of text files")
  if len(train_parts) + len(val_parts) == 1 or not val_parts or not train_parts:
    # One file (or an unlucky split): split the bytes instead.
    data = b"".join(train_parts + val_parts)
    cut = int(len(data) * (1.0 - val_fraction))
    train_parts, val_parts = [data[:cut]], [data[cut:]]
  sep = bytes([SEPARATOR])
  train = np.frombuffer(sep.join(train_parts), dtype=np.uint8)
  val = np.frombuffer(sep.join(val_parts), dtype=np.uint8)
  return Corpus(train=train, val=val, train_files=len(train_parts), val_files=len(val_parts),
                source=str(root))


class PackedBatches:
  """Fixed-length sequences packed from a token stream, shuffled per epoch.

  Sequence ``j`` is ``tokens[j*seq_len : j*seq_len + seq_len + 1]`` (inputs
  and next-token targets share it). Batch ``k`` takes global sequence slots
  ``k*B .. k*B+B-1``; slot ``i`` belongs to epoch ``i // n_seq`` and maps to a
  sequence through that epoch's permutation (from ``seed`` and the epoch).
  Everything is a function of ``(seed, k)``: no hidden iterator state.
  """

  def __init__(self, tokens: np.ndarray, *, seq_len: int, batch_size: int, seed: int = 0,
               shuffle: bool = True, split: str = "train", vocab_size: int | None = None):
    if seq_len < 1 or batch_size < 1:
      raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len=}, {batch_size=}")
    if vocab_size is not None and len(tokens):
      lo, hi = int(np.min(tokens)), int(np.max(tokens))
      if lo < 0 or hi >= vocab_size:
        raise ValueError(f"the {split} split holds token ids in [{lo}, {hi}]; the vocabulary "
                         f"allows [0, {vocab_size - 1}]")
    self.tokens = tokens
    self.seq_len = seq_len
    self.batch_size = batch_size
    self.seed = seed
    self.shuffle = shuffle
    self.n_seq = (len(tokens) - 1) // seq_len
    if self.n_seq < 1:
      raise ValueError(
          f"the {split} split has {len(tokens)} tokens, fewer than one sequence needs "
          f"(seq_len + 1 = {seq_len + 1}); use a larger corpus (--corpus) or a shorter "
          "--seq-len")
    self._perm_cache: dict[int, np.ndarray] = {}

  def _perm(self, epoch: int) -> np.ndarray:
    if not self.shuffle:
      return np.arange(self.n_seq)
    if epoch not in self._perm_cache:
      if len(self._perm_cache) >= 2:  # batches straddle at most two epochs
        self._perm_cache.pop(min(self._perm_cache))
      self._perm_cache[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n_seq)
    return self._perm_cache[epoch]

  def sequence_ids(self, k: int) -> np.ndarray:
    """Sequence indices [B] of batch ``k``."""
    slots = np.arange(k * self.batch_size, (k + 1) * self.batch_size)
    epochs, within = np.divmod(slots, self.n_seq)
    return np.array([self._perm(int(e))[w] for e, w in zip(epochs, within)])

  def batch(self, k: int) -> np.ndarray:
    """Batch ``k`` as int32 [B, seq_len + 1] (inputs are [:, :-1], targets [:, 1:])."""
    starts = self.sequence_ids(k) * self.seq_len
    idx = starts[:, None] + np.arange(self.seq_len + 1)[None, :]
    return self.tokens[idx].astype(np.int32)


def eval_batches(tokens: np.ndarray, *, seq_len: int, batch_size: int,
                 num_batches: int) -> Sequence[np.ndarray]:
  """The first ``num_batches`` unshuffled validation batches (fewer if short)."""
  ds = PackedBatches(tokens, seq_len=seq_len, batch_size=batch_size, shuffle=False,
                     split="validation")
  n = min(num_batches, max(ds.n_seq // batch_size, 1))
  return [ds.batch(k) for k in range(n)]
