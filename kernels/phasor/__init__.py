"""Chunked Pallas kernel of the causal phasor memory (fwd + bwd).

The reference (and CPU fallback) is ``phasor_memory_reference``, the
associative_scan form in ``holojax.nn.phasor``.
"""

from holojax.kernels.phasor.kernel import PhasorBlocks, phasor_memory_pallas
from holojax.nn.phasor import phasor_memory_reference

__all__ = ["PhasorBlocks", "phasor_memory_pallas", "phasor_memory_reference"]
