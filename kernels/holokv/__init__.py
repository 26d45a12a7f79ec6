"""HoloKV's slot attention: the decode kernel of the compressed KV cache.

``reference.py`` (the ``jnp`` contract: softmax attention of coded query
rows over the valid slots, with per-row log-sum-exp), ``pallas_triton.py``
(the flash-decoding kernel, compiled on GPU or run by the Pallas
interpreter), ``config.py`` (its tile sizes) and ``api.py`` (the public
:func:`slot_attention`, which picks a backend).
"""

from holojax.kernels.holokv.api import (DEFAULT_ORDER, IMPLEMENTATIONS, select_implementation,
                                        slot_attention)
from holojax.kernels.holokv.config import SlotTiles
from holojax.kernels.holokv.pallas_triton import combine, slot_attention_pallas
from holojax.kernels.holokv.reference import slot_attention_reference

__all__ = ["DEFAULT_ORDER", "IMPLEMENTATIONS", "SlotTiles", "combine", "select_implementation",
           "slot_attention", "slot_attention_pallas", "slot_attention_reference"]
