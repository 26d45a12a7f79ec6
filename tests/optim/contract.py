"""The optax contract every holojax optimizer joins.

Each ``check_*`` takes ``make_opt(learning_rate) -> GradientTransformation``
(plus what it needs) and asserts one property. ``tests/optim/test_contract.py``
runs :data:`CHECKS` for every optimizer in ``holojax.optim.registry``; a
registered optimizer joins by being registered (give it small compression
thresholds there if it compresses only large tensors).

The checks: convergence (parabola, Rosenbrock), one trace for two steps,
``optax.MultiSteps``, ``optax.masked``, chains with clipping and a schedule,
bf16/f32 dtypes, ``nnx.Optimizer`` (eager and under ``nnx.jit``), sharding on
8 CPU devices (auto, and explicit FSDP: state sharded like its parameter,
types stable across updates, no all-gather in the compiled update), orbax
round trips and ``optax.inject_hyperparams``.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P


def default_params(dtype=jnp.float32):
  """A matrix large enough for block compression and a small bias."""
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"w": jax.random.normal(k1, (64, 128), dtype),
          "b": jax.random.normal(k2, (10,), dtype)}


def _run(opt, loss, params, steps):
  """``steps`` optimizer steps inside one jitted ``lax.scan``; returns params."""
  def step(carry, _):
    p, s = carry
    g = jax.grad(loss)(p)
    u, s = opt.update(g, s, p)
    return (optax.apply_updates(p, u), s), None
  (params, _), _ = jax.jit(lambda p, s: jax.lax.scan(step, (p, s), None, length=steps))(
      params, opt.init(params))
  return params


def parabola_loss(params):
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32) - 0.5)) for x in jax.tree.leaves(params))


def rosenbrock_loss(params):
  """Batched Rosenbrock: ``x, y = p[0], p[1]``, minimum 0 at ``x = y = 1``."""
  x, y = params["xy"][0], params["xy"][1]
  return jnp.mean(jnp.square(1.0 - x) + 100.0 * jnp.square(y - x * x))


def check_parabola(make_opt, lr=0.05, steps=300, tol=1e-2):
  params = default_params()
  l0 = float(parabola_loss(params))
  l1 = float(parabola_loss(_run(make_opt(lr), parabola_loss, params, steps)))
  assert l1 < tol * l0, (l0, l1)


def check_rosenbrock(make_opt, lr=0.02, steps=800, n=4096, target=0.05):
  """Batched Rosenbrock from (-0.5, 1.5): the loss falls below ``target`` of its start."""
  params = {"xy": jnp.stack([jnp.full((n,), -0.5), jnp.full((n,), 1.5)])
            + 0.1 * jax.random.normal(jax.random.key(1), (2, n))}
  l0 = float(rosenbrock_loss(params))
  l1 = float(rosenbrock_loss(_run(make_opt(lr), rosenbrock_loss, params, steps)))
  assert l1 < target * l0, (l0, l1)


def check_no_recompile(make_opt):
  """The jitted update traces once for two steps, with parameters and state donated
  as a train step does them (an eager ``init`` must not hold one buffer twice)."""
  traces = []
  opt = make_opt(1e-2)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(p, s):
    traces.append(1)
    u, s = opt.update(jax.grad(parabola_loss)(p), s, p)
    return optax.apply_updates(p, u), s

  p = default_params()
  s = opt.init(p)
  p, s = step(p, s)
  p, s = step(p, s)
  jax.block_until_ready(p)
  assert len(traces) == 1, len(traces)


def check_inject_hyperparams(factory, kwargs, static_args=(), steps=3):
  """``inject_hyperparams(factory)`` gives the same updates as ``factory``."""
  plain = factory(**kwargs)
  inj = optax.inject_hyperparams(factory, static_args=static_args)(**kwargs)
  p = default_params()
  s1, s2 = plain.init(p), inj.init(p)
  u1_step = jax.jit(plain.update)
  u2_step = jax.jit(inj.update)
  for _ in range(steps):
    g = jax.grad(parabola_loss)(p)
    u1, s1 = u1_step(g, s1, p)
    u2, s2 = u2_step(g, s2, p)
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    p = optax.apply_updates(p, u1)


def check_multisteps(make_opt, k=3):
  """``optax.MultiSteps`` accumulates ``k`` micro-steps, then applies one."""
  opt = optax.MultiSteps(make_opt(1e-2), every_k_schedule=k)
  p = default_params()
  s = opt.init(p)
  upd = jax.jit(opt.update)
  for i in range(k):
    u, s = upd(jax.grad(parabola_loss)(p), s, p)
    nonzero = any(bool(jnp.any(x != 0)) for x in jax.tree.leaves(u))
    assert nonzero == (i == k - 1), (i, nonzero)


def check_masked(make_opt):
  """``optax.masked`` leaves masked-out leaves' updates untouched."""
  opt = optax.masked(make_opt(1e-2), {"w": True, "b": False})
  p = default_params()
  g = jax.grad(parabola_loss)(p)
  u, _ = jax.jit(opt.update)(g, opt.init(p), p)
  np.testing.assert_array_equal(np.asarray(u["b"]), np.asarray(g["b"]))
  assert not np.allclose(np.asarray(u["w"]), np.asarray(g["w"]))


def check_chain(make_opt):
  """Chains with clipping and a schedule; the loss goes down."""
  sched = optax.warmup_cosine_decay_schedule(0.0, 0.05, 10, 100)
  opt = optax.chain(optax.clip_by_global_norm(1.0), make_opt(sched))
  p = default_params()
  l0 = float(parabola_loss(p))
  l1 = float(parabola_loss(_run(opt, parabola_loss, p, 50)))
  assert l1 < l0, (l0, l1)


def check_dtypes(make_opt, dtypes=(jnp.float32, jnp.bfloat16)):
  """Updates keep each parameter's dtype (bf16 params get bf16 updates)."""
  for dtype in dtypes:
    opt = make_opt(1e-2)
    p = default_params(dtype)
    u, s = jax.jit(opt.update)(jax.grad(parabola_loss)(p), opt.init(p), p)
    for x, y in zip(jax.tree.leaves(p), jax.tree.leaves(u)):
      assert y.dtype == x.dtype, (x.dtype, y.dtype)
    new_p = optax.apply_updates(p, u)
    for x, y in zip(jax.tree.leaves(p), jax.tree.leaves(new_p)):
      assert y.dtype == x.dtype


def check_state_sharding(make_opt):
  """On an 8-device mesh (auto sharding), a jitted step keeps the state's shardings.

  Params are sharded on their leading axis; state leaves whose leading axis
  divides by 8 are sharded the same way, the others replicated.
  """
  _need_8_devices()
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))

  def place(x):
    spec = P("data") if x.ndim and x.shape[0] and x.shape[0] % 8 == 0 else P()
    return jax.device_put(x, NamedSharding(mesh, spec))

  p = jax.tree.map(place, default_params())
  opt = make_opt(1e-2)
  s0 = jax.tree.map(place, opt.init(p))
  g = jax.jit(jax.grad(parabola_loss))(p)
  _, s1 = jax.jit(opt.update)(g, s0, p)
  for a, b in zip(jax.tree.leaves(s0), jax.tree.leaves(s1)):
    assert a.sharding.is_equivalent_to(b.sharding, a.ndim), (a.shape, a.sharding, b.sharding)


def check_orbax_roundtrip(make_opt, tmp_path):
  """StandardCheckpointer save/restore of the state gives identical next updates."""
  import orbax.checkpoint as ocp

  opt = make_opt(1e-2)
  p = default_params()
  upd = jax.jit(opt.update)
  s = opt.init(p)
  for _ in range(2):
    u, s = upd(jax.grad(parabola_loss)(p), s, p)
    p = optax.apply_updates(p, u)
  path = tmp_path / "opt_state"
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(path, s)
  ckpt.wait_until_finished()
  restored = ckpt.restore(path, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), s))
  g = jax.grad(parabola_loss)(p)
  u1, s1 = upd(g, s, p)
  u2, s2 = upd(g, restored, p)
  for a, b in zip(jax.tree.leaves((u1, s1)), jax.tree.leaves((u2, s2))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class _Net(nnx.Module):
  """Linear regression model: a (128, 64) kernel (compressible) and a bias."""

  def __init__(self, rngs: nnx.Rngs):
    self.dense = nnx.Linear(128, 64, rngs=rngs)

  def __call__(self, x_bd):
    return self.dense(x_bd)


def check_nnx_optimizer(make_opt, steps=4, modes=("eager", "jit")):
  """``nnx.Optimizer(model, tx, wrt=nnx.Param)`` takes several updates, eagerly
  and under ``nnx.jit`` (``modes``), and the loss goes down."""
  k1, k2 = jax.random.split(jax.random.key(3))
  x_bd = jax.random.normal(k1, (32, 128))
  y_bo = jax.random.normal(k2, (32, 64))
  loss_fn = lambda model: jnp.mean(jnp.square(model(x_bd) - y_bo))

  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  for step in [{"eager": train_step, "jit": nnx.jit(train_step)}[m] for m in modes]:
    model = _Net(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, make_opt(1e-2), wrt=nnx.Param)
    losses = [float(step(model, optimizer)) for _ in range(steps)] + [float(loss_fn(model))]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses


# FSDP-sharded parameters on an explicit 8-device mesh: a leading axis, a last
# axis with whole 128-element blocks per shard, a last axis without (32 per
# shard), a sharded vector and a small replicated one.
FSDP_PARAMS = {"rows": ((256, 128), P("fsdp", None)), "cols": ((64, 1024), P(None, "fsdp")),
               "odd": ((64, 256), P(None, "fsdp")), "vec": ((512,), P("fsdp")),
               "small": ((10,), P())}


def collective_sizes(hlo: str, op: str) -> list[int]:
  """Element counts of the outputs of each ``op`` (e.g. "all-gather") in the
  compiled HLO text ``hlo``, a tuple's summed (its ``/*index=5*/`` comments
  included)."""
  sizes = []
  for m in re.finditer(rf"= (\([^\n]*?\)|\S+) {op}(?:-start)?\(", hlo):
    dims = re.findall(r"\w+\[([\d,]*)\]", m.group(1))
    sizes.append(sum(int(np.prod([int(d) for d in x.split(",") if d])) for x in dims))
  return sizes


def placed_params(tree, mesh=None) -> dict:
  """Random parameters of ``tree`` (name -> (shape, spec)), put on ``mesh`` with
  their specs (``mesh=None``: unsharded)."""
  keys = jax.random.split(jax.random.key(0), len(tree))
  put = (lambda x, s: x) if mesh is None else (
      lambda x, s: jax.device_put(x, NamedSharding(mesh, s)))
  return {k: put(jax.random.normal(key, shape), spec)
          for key, (k, (shape, spec)) in zip(keys, tree.items())}


def run_steps(opt, params, steps: int):
  """``steps`` jitted updates of ``opt`` on gradients of varied scales:
  ``(updates per step, final state, the compiled update's HLO text)``."""
  s = opt.init(params)
  update = jax.jit(opt.update)
  us = []
  for t in range(steps):
    g = jax.tree.map(lambda x: jnp.sin(x * (t + 1)) * (1 + jnp.abs(x)), params)
    u, s = update(g, s, params)
    params = jax.tree.map(lambda x, y: x - 0.01 * y, params, u)
    us.append(u)
  return us, s, update.lower(g, s, params).compile().as_text()


def _need_8_devices():
  """Mesh checks need 8 devices: the 8 CPU devices of tests/conftest.py (an
  error when missing there), skipped on a machine with fewer accelerators."""
  if jax.default_backend() != "cpu" and len(jax.devices()) < 8:
    pytest.skip(f"needs 8 devices; {jax.default_backend()} has {len(jax.devices())}")
  assert len(jax.devices()) >= 8, "needs 8 devices (tests/conftest.py)"


def explicit_mesh():
  _need_8_devices()
  return jax.make_mesh((8,), ("fsdp",), axis_types=(AxisType.Explicit,))


def fsdp_params(mesh, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(5), len(FSDP_PARAMS))
  return {name: jax.device_put(jax.random.normal(k, shape, dtype), NamedSharding(mesh, spec))
          for k, (name, (shape, spec)) in zip(keys, FSDP_PARAMS.items())}


def _types(tree):
  return jax.tree.structure(tree), [jax.typeof(x) for x in jax.tree.leaves(tree)]


def _sharded(x) -> bool:
  spec = jax.typeof(x).sharding.spec
  return any(e is not None for e in spec)


def _per_param_subtrees(state, params):
  """``(param, state subtree)`` pairs of every state node laid out like
  ``params`` (``mu``, ``nu``, per-leaf codes, ...; a subtree per parameter)."""
  ptd = jax.tree.structure(params)
  out = []

  def walk(node):
    if isinstance(node, jax.Array) or node is None:
      return
    try:
      subs = ptd.flatten_up_to(node)
    except (ValueError, TypeError):
      children = (node.values() if isinstance(node, dict) else
                  node if isinstance(node, (tuple, list)) else ())
      for child in children:
        walk(child)
      return
    out.extend(zip(jax.tree.leaves(params), subs))

  walk(state)
  return out


def check_explicit_sharding(make_opt, steps=3):
  """Explicit sharding (``AxisType.Explicit``) with FSDP-sharded parameters.

  ``init`` (eager and jitted) and every update give the same state types
  (shape, dtype and sharding); updates carry their parameter's sharding;
  every state array holding at least 1/64 of its parameter's elements is
  sharded when the parameter is (nothing is kept whole on one device); the
  compiled update has no all-gather.
  """
  mesh = explicit_mesh()
  with jax.set_mesh(mesh):
    params = fsdp_params(mesh)
    opt = make_opt(1e-2)
    state = opt.init(params)
    want = _types(state)
    assert _types(jax.jit(opt.init)(params)) == want
    update = jax.jit(opt.update)
    grad = jax.jit(jax.grad(parabola_loss))
    for _ in range(steps):
      g = grad(params)
      u, state = update(g, state, params)
      assert _types(state) == want, "state types changed across an update"
      assert _types(u) == _types(params), "updates do not carry the parameters' shardings"
      params = optax.apply_updates(params, u)
    pairs = _per_param_subtrees(state, params)
    for p, sub in pairs:
      for x in jax.tree.leaves(sub):
        if _sharded(p) and x.size * 64 >= p.size:
          assert _sharded(x), (jax.typeof(p), jax.typeof(x))
    hlo = update.lower(g, state, params).compile().as_text()
    assert "all-gather" not in hlo, "the update gathers a sharded tensor"


def check_explicit_sharding_eager(make_opt):
  """The same under explicit sharding without ``jax.jit`` (one eager update), on
  the hardest leaves (eager dispatch compiles every op: the cost is per leaf)."""
  mesh = explicit_mesh()
  with jax.set_mesh(mesh):
    params = {k: v for k, v in fsdp_params(mesh).items() if k in ("odd", "vec")}
    opt = make_opt(1e-2)
    state = opt.init(params)
    u, state2 = opt.update(jax.grad(parabola_loss)(params), state, params)
    assert _types(state2) == _types(state)
    assert _types(u) == _types(params)


def check_inject_learning_rate(make_opt):
  """``optax.inject_hyperparams`` over the learning rate gives the same updates."""
  check_inject_hyperparams(lambda learning_rate: make_opt(learning_rate),
                           dict(learning_rate=1e-2))


# The checks that take only ``make_opt``: parametrise an optimizer's test over these.
CHECKS = (check_parabola, check_rosenbrock, check_no_recompile, check_multisteps, check_masked,
          check_chain, check_dtypes, check_state_sharding, check_nnx_optimizer,
          check_explicit_sharding, check_explicit_sharding_eager, check_inject_learning_rate)


def run_contract(make_opt, tmp_path):
  """Every check above (inject_hyperparams with static args needs a factory: call it yourself)."""
  for check in CHECKS:
    check(make_opt)
  check_orbax_roundtrip(make_opt, tmp_path)
