import dataclasses
import json

import jax
import numpy as np
import optax
import pytest

from holojax.optim import registry
from holojax.train import NonFiniteLossError, TrainConfig, params_of, train
from holojax.train import checkpoint as ckpt
from holojax.train.checkpoint import ConfigMismatchError


def _leaves(result):
  return [np.asarray(x) for x in jax.tree.leaves(params_of(result))]


def _assert_close_params(a, b, atol):
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def single(tiny_run_module):
  """The reference: the tiny run on one device, uninterrupted."""
  return train(tiny_run_module(mesh_data=1))


def test_training_reduces_loss(tiny_run):
  r = train(tiny_run(steps=30, learning_rate=1e-2, eval_every=30))
  assert r.train_losses[-1][1] < r.train_losses[0][1] - 1.0
  assert r.final_eval_loss < 5.0  # ln(256) = 5.55 at chance
  assert r.state_bits_per_param == pytest.approx(64.0, abs=0.01)


@pytest.mark.parametrize("mesh", [(8, 1), (1, 8), (2, 4)], ids=["dp8", "fsdp8", "dp2xfsdp4"])
def test_mesh_runs_match_single_device(tiny_run, mesh, single):
  sharded = train(tiny_run(mesh_data=mesh[0], mesh_fsdp=mesh[1]))
  a = np.array([l for _, l in single.train_losses])
  b = np.array([l for _, l in sharded.train_losses])
  np.testing.assert_allclose(a, b, rtol=2e-5)
  _assert_close_params(single, sharded, atol=2e-5)
  if mesh[1] > 1:  # FSDP really shards the parameters
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(params_of(sharded))}
    assert any("fsdp" in s for s in specs)


def test_checkpoint_restores_under_another_mesh(tiny_run, tmp_path, single):
  train(tiny_run(mesh_data=1, mesh_fsdp=8, ckpt_dir=str(tmp_path), ckpt_every=4), stop_after=4)
  resumed = train(tiny_run(mesh_data=4, mesh_fsdp=2, ckpt_dir=str(tmp_path), ckpt_every=4,
                           resume=True))
  assert resumed.train_losses[0][0] == 5  # continued after the checkpoint
  _assert_close_params(single, resumed, atol=2e-5)
  for x in jax.tree.leaves(params_of(resumed)):
    assert x.sharding.mesh.shape == {"data": 4, "fsdp": 2}


def test_in_process_resume_is_exact(tiny_run, tmp_path, single):
  cfg = tiny_run(mesh_data=1, ckpt_dir=str(tmp_path), ckpt_every=3)
  train(cfg, stop_after=5)  # checkpoint at 3; steps 4-5 are lost
  resumed = train(TrainConfig(**{**cfg.to_json(), "resume": True}))
  _assert_close_params(single, resumed, atol=0)


def test_checkpoint_from_other_model_is_refused(tiny_run, tmp_path):
  train(tiny_run(ckpt_dir=str(tmp_path), ckpt_every=4), stop_after=4)
  with pytest.raises(ConfigMismatchError, match="different model.*hidden_size"):
    train(tiny_run(model="small", ckpt_dir=str(tmp_path), resume=True))


def test_existing_checkpoints_need_resume(tiny_run, tmp_path):
  train(tiny_run(ckpt_dir=str(tmp_path), ckpt_every=4), stop_after=4)
  with pytest.raises(ValueError, match="--resume"):
    train(tiny_run(ckpt_dir=str(tmp_path)))


def _nan_after(n):
  def init(params):
    return optax.ScaleByScheduleState(count=jax.numpy.zeros([], jax.numpy.int32))

  def update(updates, state, params=None):
    bad = state.count >= n
    updates = jax.tree.map(lambda u: jax.numpy.where(bad, jax.numpy.nan, -1e-3 * u), updates)
    return updates, optax.ScaleByScheduleState(count=state.count + 1)

  return optax.GradientTransformation(init, update)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_run, tmp_path):
  registry.register("nan_after_5", lambda lr, wd: _nan_after(5), overwrite=True)
  cfg = tiny_run(optimizer="nan_after_5", steps=20, ckpt_dir=str(tmp_path), ckpt_every=2,
                 clip_norm=None)
  with pytest.raises(NonFiniteLossError, match="step 6"):
    train(cfg)  # params turn NaN in update 6: checkpoint 6 is refused, not saved
  import orbax.checkpoint as ocp
  steps = ocp.CheckpointManager(str(tmp_path)).all_steps()
  assert max(steps) == 4
  said = []  # resuming restores the last good checkpoint (4) and meets the NaN again at 6
  with pytest.raises(NonFiniteLossError, match="step 6"):
    train(dataclasses.replace(cfg, resume=True), say=said.append)
  assert any("resumed from step 4" in line for line in said)
  mngr = ocp.CheckpointManager(str(tmp_path))
  for step in mngr.all_steps():
    state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    assert bool(ckpt.all_finite(state["state"])), step


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damaged_latest_checkpoint_resumes_from_the_one_before(tiny_run, tmp_path, single, how,
                                                               damage):
  cfg = tiny_run(mesh_data=1, ckpt_dir=str(tmp_path), ckpt_every=2)
  train(cfg, stop_after=6)  # checkpoints 2, 4, 6
  damage(tmp_path, 6, how)
  said = []
  with pytest.warns(RuntimeWarning, match="checkpoint 6"):
    resumed = train(dataclasses.replace(cfg, resume=True), say=said.append)
  assert resumed.start == 4 and any("resumed from step 4" in line for line in said)
  _assert_close_params(single, resumed, atol=0)
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in rows if "train/loss" in r]
  assert steps == list(range(1, 9))  # steps 5-6 of the first try dropped, then rewritten


def test_resume_with_nothing_to_resume_is_an_error(tiny_run, tmp_path):
  with pytest.raises(ValueError, match="nothing to resume in"):
    train(tiny_run(ckpt_dir=str(tmp_path), resume=True))


def test_resume_of_another_run_names_the_differences(tiny_run, tmp_path):
  train(tiny_run(ckpt_dir=str(tmp_path), ckpt_every=4), stop_after=4)
  with pytest.raises(ConfigMismatchError) as e:
    train(tiny_run(ckpt_dir=str(tmp_path), resume=True, optimizer="lion", seed=7,
                   opt_kwargs={"b1": 0.8}))
  msg = str(e.value)
  for part in ("--optimizer 'adamw' there, 'lion' now", "--seed 0 there, 7 now",
               "--opt-kwargs {} there, {'b1': 0.8} now"):
    assert part in msg, msg
  assert "\n" not in msg


def test_run_says_where_its_files_go(tiny_run, tmp_path):
  said = []
  r = train(tiny_run(steps=2, ckpt_dir=str(tmp_path)), say=said.append)
  text = "\n".join(said)
  assert f"checkpoints every 100 steps in {tmp_path}" in text
  assert str(tmp_path / "metrics.jsonl") in text and "compiling" in text
  again = train(tiny_run(steps=2, ckpt_dir=str(tmp_path), resume=True), say=said.append)
  assert again.start == 2 and again.final_eval_loss == r.final_eval_loss
  assert "already finished" in said[-1]


def test_unusable_ckpt_dir_is_an_error(tiny_run, tmp_path):
  (tmp_path / "f").write_text("x")
  with pytest.raises(ValueError, match="is a file"):
    train(tiny_run(ckpt_dir=str(tmp_path / "f")))


@pytest.mark.parametrize("kw,err,match", [
    ({"optimizer": "nope"}, ValueError, "unknown optimizer 'nope'"),
    ({"model": "nope"}, ValueError, "unknown model preset 'nope'"),
    ({"seq_len": 65}, ValueError, "seq_len=65 is larger than model 'tiny' supports"),
    ({"batch_size": 4, "mesh_data": 8}, ValueError, "multiple of the 8 devices"),
    ({"mesh_data": 16}, ValueError, "needs 16 devices"),
])
def test_bad_input(tiny_run, kw, err, match):
  with pytest.raises(err, match=match):
    train(tiny_run(**kw))


@pytest.mark.parametrize("kw,match", [
    ({"steps": 0}, "steps"), ({"schedule": "step"}, "schedule"),
    ({"learning_rate": -1.0}, "learning_rate"), ({"resume": True}, "ckpt_dir"),
])
def test_bad_config(kw, match):
  with pytest.raises(ValueError, match=match):
    TrainConfig(**kw)


# Compressed optimizers with thresholds small enough that the tiny model's matrices
# are compressed (issue 18: compressed state is where FSDP breaks in the anchors).
COMPRESSED = {"turbo_adam": dict(min_m_compress_elements=1024),
              "holo_adam": dict(min_compress_size=1024)}


@pytest.mark.parametrize("name", sorted(COMPRESSED))
def test_compressed_state_under_fsdp_and_across_meshes(tiny_run, tmp_path, name):
  """FSDP over 8 devices gives the one-device losses, shards the compressed state
  with the parameters, and a checkpoint written under FSDP resumes on another mesh
  as the uninterrupted run continues."""
  kw = dict(optimizer=name, opt_kwargs=COMPRESSED[name])
  single = train(tiny_run(mesh_data=1, **kw))
  losses = lambda r: np.array([l for _, l in r.train_losses])
  fsdp = train(tiny_run(mesh_data=1, mesh_fsdp=8, ckpt_dir=str(tmp_path), ckpt_every=4, **kw),
               stop_after=4)
  np.testing.assert_allclose(losses(fsdp), losses(single)[:4], rtol=2e-4)
  big = [x for x in jax.tree.leaves(fsdp.state["opt"]) if x.size >= 1024]
  assert big and all(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
                     for x in big), [(x.shape, x.sharding) for x in big]
  resumed = train(tiny_run(mesh_data=4, mesh_fsdp=2, ckpt_dir=str(tmp_path), ckpt_every=4,
                           resume=True, **kw))
  assert resumed.train_losses[0][0] == 5
  np.testing.assert_allclose(losses(resumed), losses(single)[4:], rtol=2e-4)
