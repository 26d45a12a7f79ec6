"""The causal phasor memory: reference, Pallas kernel, and the public op.

``reference.py`` (the associative_scan contract and the phasor maths it
uses), ``pallas_triton.py`` (the chunked kernel on Pallas-Triton, compiled
on GPU or run by the Pallas interpreter), ``mosaic_gpu.py`` (the same
algorithm on Pallas Mosaic GPU, Hopper), ``chunked.py`` (the custom VJP both
share), ``config.py`` (their tile sizes) and ``api.py`` (the public
:func:`phasor_memory`, which picks a backend).
"""

from holojax.kernels.phasor.api import (DEFAULT_ORDER, IMPLEMENTATIONS, check_implementation,
                                        phasor_memory, select_implementation)
from holojax.kernels.phasor.config import PhasorBlocks
from holojax.kernels.phasor.pallas_triton import phasor_memory_pallas
from holojax.kernels.phasor.reference import (bind, phasor_memory_reference, read_scale, unbind,
                                              with_positions)

__all__ = ["DEFAULT_ORDER", "IMPLEMENTATIONS", "PhasorBlocks", "bind", "check_implementation",
           "phasor_memory", "phasor_memory_pallas", "phasor_memory_reference", "read_scale",
           "select_implementation", "unbind", "with_positions"]
