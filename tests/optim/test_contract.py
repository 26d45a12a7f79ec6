"""Every optimizer in ``holojax.optim.registry`` passes the optax contract (tests/optim/contract.py)."""

import pytest

from holojax.optim import registry
from tests.optim import contract

# Compression thresholds small enough that the contract's tensors are compressed.
SMALL = {"turbo_adam": dict(min_m_compress_elements=1024),
         "turbo_adam_v": {},
         "holo_adam": dict(min_compress_size=1024, warmup_steps=10),
         "holo_adam_max": dict(min_compress_size=1024, warmup_steps=10),
         "holo_adam_conservative": dict(min_compress_size=1024, warmup_steps=10)}


# HoloAdam "max" (ratio 50, 2 heads) sketches its momentum at cos ~0.3 and
# needs twice the steps on Rosenbrock (the original: 8.5 of 157 left at 800).
ROSENBROCK = {"holo_adam_max": dict(steps=1600)}


# Layouts of a registered optimizer (issue 12), as cases of their own: shown name ->
# (registry name, extra keyword arguments). Both flat layouts pass the explicit-sharding
# checks (TurboAdam's splits its buffers per device, HoloAdam's stacks tensors of one
# shape and compute spec, sharded like them).
FLAT = {f"{n}[flat]": (n, dict(tree_layout="flat"))
        for n in ("turbo_adam", "turbo_adam_v", "holo_adam")}


def _make(name):
  base, kw = FLAT.get(name, (name, {}))
  return lambda lr: registry.get(base, lr, 0.0, **SMALL.get(base, {}), **kw)


# Presets of one implementation (its code, other hyperparameters): the costly
# sharding and eager checks run for the implementation by default and for
# every preset with `pytest -m exhaustive`.
PRESET_OF = {"holo_adam_max": "holo_adam", "holo_adam_conservative": "holo_adam",
             "turbo_adam_v[flat]": "turbo_adam[flat]"}
COSTLY = (contract.check_explicit_sharding, contract.check_explicit_sharding_eager,
          contract.check_nnx_optimizer)


def _cases():
  for name in registry.names() + list(FLAT):
    for check in contract.CHECKS:
      costly = check in COSTLY and (name in PRESET_OF or (
          # HoloAdam's eager update dispatches hundreds of small ops, each
          # compiled for the explicit mesh (~100 s on 2 cores, 16 s flat); jitted,
          # it is checked.
          name in ("holo_adam", "holo_adam[flat]")
          and check is contract.check_explicit_sharding_eager))
      marks = [pytest.mark.exhaustive] if costly else []
      yield pytest.param(name, check, id=f"{name}-{check.__name__}", marks=marks)


@pytest.mark.parametrize("name,check", list(_cases()))
def test_contract(name, check):
  if check is contract.check_rosenbrock:
    check(_make(name), **ROSENBROCK.get(name, {}))
  else:
    check(_make(name))


def test_every_registered_optimizer_is_covered():
  assert set(SMALL) | {"adamw", "adafactor", "lion"} == set(registry.names())


@pytest.mark.parametrize("name", registry.names() + list(FLAT))
def test_orbax_roundtrip(name, tmp_path):
  contract.check_orbax_roundtrip(_make(name), tmp_path)
