"""Optax transformations of holojax and the optimizer registry.

The optimizers live in modules named after the method (:mod:`.turbo` holds
``turbo_adam``, :mod:`.holo` holds ``holo_adam``), so that the public
functions exported here never shadow a module: ``import holojax.optim.turbo
as m`` is the module, ``holojax.optim.turbo_adam`` the function.
"""

from holojax.optim import registry
from holojax.optim.accounting import state_bits_per_param, tree_bytes, tree_size
from holojax.optim.holo import HOLO_ADAM_PRESETS, holo_adam, scale_by_holo_adam
from holojax.optim.holo import STATIC_ARGS as HOLO_ADAM_STATIC_ARGS
from holojax.optim.turbo import STATIC_ARGS as TURBO_ADAM_STATIC_ARGS
from holojax.optim.turbo import scale_by_turbo_adam, turbo_adam

registry.register("turbo_adam", lambda learning_rate, weight_decay, **kw: turbo_adam(
    learning_rate, weight_decay=weight_decay, **kw), wraps=turbo_adam)
registry.register("turbo_adam_v", lambda learning_rate, weight_decay, **kw: turbo_adam(
    learning_rate, weight_decay=weight_decay, **{"compress_m": False, **kw}), wraps=turbo_adam)
for _name, _preset in (("holo_adam", "balanced"), ("holo_adam_max", "max"),
                      ("holo_adam_conservative", "conservative")):
  registry.register(_name, lambda learning_rate, weight_decay, _p=_preset, **kw: holo_adam(
      learning_rate, weight_decay=weight_decay, **{**HOLO_ADAM_PRESETS[_p], **kw}), wraps=holo_adam)

__all__ = ["HOLO_ADAM_PRESETS", "HOLO_ADAM_STATIC_ARGS", "TURBO_ADAM_STATIC_ARGS", "holo_adam",
           "registry", "scale_by_holo_adam", "scale_by_turbo_adam", "state_bits_per_param",
           "tree_bytes", "tree_size", "turbo_adam"]
