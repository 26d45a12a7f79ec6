"""One way to choose an op's backend.

Every op in ``holojax.kernels`` offers a few named backends and takes
``implementation=None | name | sequence of names``:

  "xla"        the op's pure-``jnp`` reference, compiled by XLA (runs anywhere)
  "mosaic"     the Pallas kernel lowered to Mosaic GPU (Hopper and newer)
  "triton"     the Pallas kernel lowered to Triton (GPU)
  "interpret"  the Triton kernel run by the Pallas interpreter (any
               backend; slow: CPU tests)
  "pallas"     alias: the compiled Pallas GPU backends the op has, in order
               ("mosaic", then "triton")

``None`` tries the op's documented default order; a sequence is tried in
order, first that can run wins; a single name (or the alias) is *forced*: if
it cannot run here the op raises ``ValueError`` with the reason. A backend
says it cannot run these inputs here by raising :class:`Unsupported` from
its ``check``. Which one runs is a pure function of the arguments (each op
exports ``select_implementation``), and the op runs it inside
``jax.named_scope(f"{op}/{name}")``, so profiles and HLO show it too; no
module state records it.

Example:
  >>> def no_gpu(x):
  ...   raise Unsupported("needs a GPU")
  >>> backends = (Backend("xla", lambda x: None, lambda x: x + 1),
  ...             Backend("triton", no_gpu, lambda x: x + 2))
  >>> select("add", backends, None, ("triton", "xla"), 1).name
  'xla'
  >>> select("add", backends, "triton", ("triton", "xla"), 1)
  Traceback (most recent call last):
  ...
  ValueError: add: implementation='triton' cannot run here: needs a GPU
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

Implementation = str | Sequence[str] | None

# Aliases, each a list of backend names tried in order (only those the op has).
ALIASES = {"pallas": ("mosaic", "triton")}


class Unsupported(NotImplementedError):
  """This backend cannot run these inputs here; the message says why."""


@dataclasses.dataclass(frozen=True)
class Backend:
  """One backend of an op.

  name: its implementation name ("xla", "triton", "interpret", ...).
  check: ``check(*args, **kw)`` returns if the backend can run these inputs
    here and raises :class:`Unsupported` (the reason) otherwise.
  fn: ``fn(*args, **kw)`` runs the op.
  """

  name: str
  check: Callable[..., None]
  fn: Callable[..., Any]


def candidates(op_name: str, names: Sequence[str], implementation: Implementation,
               default_order: Sequence[str]) -> tuple[str, ...]:
  """Backend names to try, in order, for ``implementation``; aliases expanded.

  Raises:
    ValueError: ``implementation`` names no backend of the op (the message
      lists the names), or is neither None, a string nor a sequence of them.

  Example:
    >>> candidates("op", ("xla", "triton"), ["pallas", "xla"], ("xla",))
    ('triton', 'xla')
  """
  choices = tuple(names) + tuple(a for a, ns in ALIASES.items() if set(ns) & set(names))
  if implementation is None:
    requested = tuple(default_order)
  elif isinstance(implementation, str):
    requested = (implementation,)
  elif isinstance(implementation, Sequence) and implementation and all(
      isinstance(n, str) for n in implementation):
    requested = tuple(implementation)
  else:
    raise ValueError(f"{op_name}: implementation={implementation!r} must be None, one of "
                     f"{choices} or a non-empty sequence of them")
  out = []
  for name in requested:
    if name not in choices:
      raise ValueError(f"{op_name}: implementation={name!r} is not one of {choices}")
    for n in ALIASES.get(name, (name,)):
      if n in names and n not in out:
        out.append(n)
  return tuple(out)


def select(op_name: str, backends: Sequence[Backend], implementation: Implementation,
           default_order: Sequence[str], *args, **kw) -> Backend:
  """The backend that runs ``op(*args, **kw)`` for ``implementation``.

  Args:
    op_name: the op's name, for messages.
    backends: the op's backends.
    implementation: None (try ``default_order``), a name or alias (forced),
      or a sequence of names (tried in order).
    default_order: names tried when ``implementation`` is None.
    *args, **kw: what each backend's ``check`` is given.

  Returns:
    The first backend whose ``check`` passes.

  Raises:
    ValueError: an unknown name; a forced name that cannot run here (with
      the reason); or none of the tried backends can run (each reason).
  """
  by_name = {b.name: b for b in backends}
  tried = candidates(op_name, tuple(by_name), implementation, default_order)
  reasons = []
  for name in tried:
    try:
      by_name[name].check(*args, **kw)
    except Unsupported as e:
      reasons.append((name, str(e)))
      continue
    return by_name[name]
  if isinstance(implementation, str):
    why = reasons[0][1] if implementation in by_name else "; ".join(
        f"{n}: {r}" for n, r in reasons)
    raise ValueError(f"{op_name}: implementation={implementation!r} cannot run here: {why}")
  raise ValueError(f"{op_name}: no implementation of {tried} can run here: "
                   + "; ".join(f"{n}: {r}" for n, r in reasons))



def runs_anywhere(*args, **kw) -> None:
  """A ``check`` that always passes (the reference, the interpreter)."""
  del args, kw


def require_triton(*args, **kw) -> None:
  """A ``check`` that passes where Pallas can lower to Triton (JAX's default
  backend is a GPU) and raises :class:`Unsupported` elsewhere."""
  del args, kw
  import jax  # noqa: PLC0415 (the chooser itself needs no JAX)
  if jax.default_backend() != "gpu":
    raise Unsupported(f"needs a GPU (Pallas Triton); the default backend is "
                      f"{jax.default_backend()!r}")


def require_hopper(*args, **kw) -> None:
  """A backend ``check``: passes where JAX's default device is an NVIDIA GPU
  of compute capability >= 9.0 (Hopper or newer), else raises
  :class:`Unsupported`."""
  del args, kw
  import jax  # noqa: PLC0415 (the chooser itself needs no JAX)
  if jax.default_backend() != "gpu":
    raise Unsupported(f"needs a Hopper GPU (Pallas Mosaic GPU); the default backend is "
                      f"{jax.default_backend()!r}")
  dev = jax.devices()[0]
  cc = getattr(dev, "compute_capability", None)
  try:
    major = int(str(cc).split(".")[0])
  except ValueError:
    major = 0
  if major < 9:
    raise Unsupported(
        f"needs a Hopper GPU (compute capability >= 9.0) for Pallas Mosaic "
        f"GPU; {dev.device_kind!r} has compute capability {cc}")
