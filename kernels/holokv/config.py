"""Tile sizes of the Pallas slot-attention kernel (``pallas_triton``)."""

from __future__ import annotations

import dataclasses

# Programs to aim for when ``splits`` is chosen automatically: the SM count
# of an H100 / H200 (132), so one wave of programs fills the GPU.
TARGET_PROGRAMS = 132


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True)
class SlotTiles:
  """Tile sizes of the slot-attention kernel.

  block_s: slots per step of a program's loop (a power of two >= 16: Triton
    tensors have power-of-two sizes and ``dot`` wants >= 16 per side).
  splits: programs per (batch, kv head) that share the filled slots; their
    partial softmax sums are merged by a log-sum-exp epilogue. None: chosen
    by :meth:`resolve`.
  num_warps, num_stages: Triton launch parameters.

  Not yet tuned on a GPU: the defaults are the usual flash-decoding ones.

  Example:
    >>> SlotTiles(block_s=32).resolve(batch=1, kv_heads=2, slots=100)
    SlotTiles(block_s=32, splits=4, num_warps=4, num_stages=2)
  """

  block_s: int = 64
  splits: int | None = None
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    b = self.block_s
    if not _is_int(b) or b < 16 or b & (b - 1):
      raise ValueError(f"block_s={b!r} must be a power of two >= 16")
    if self.splits is not None and (not _is_int(self.splits) or self.splits < 1):
      raise ValueError(f"splits={self.splits!r} must be a positive int or None")
    for name in ("num_warps", "num_stages"):
      val = getattr(self, name)
      if not _is_int(val) or val < 1:
        raise ValueError(f"{name}={val!r} must be a positive int")

  def resolve(self, *, batch: int, kv_heads: int, slots: int) -> SlotTiles:
    """These tiles for a cache of ``slots`` slots: block_s no larger than
    the slots need (>= 16), and ``splits`` if None: enough programs for
    :data:`TARGET_PROGRAMS`, at most one per block."""
    block_s = min(self.block_s, max(16, 1 << max(slots - 1, 0).bit_length()))
    blocks = -(-slots // block_s)
    splits = self.splits
    if splits is None:
      splits = max(1, min(blocks, -(-TARGET_PROGRAMS // (batch * kv_heads))))
    return dataclasses.replace(self, block_s=block_s, splits=splits)
