"""Shared fixtures: teacher-forced decoding through a cache; the SmolLM2 GGUF (fetched once, as `holojax fetch smollm2` does), the
model and tokenizer loaded from it (float32), and transformers' reference from the same file."""

import contextlib
import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

# A few fixed prompts for the parity tests (chat, prose, code, digits).
PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back "
    "again. The pass key is 70251. Remember it. 70251 is the pass key.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n",
]


@pytest.fixture(scope="session")
def smollm2_path():
  from holojax.models import pretrained
  try:
    return pretrained.find_gguf("smollm2-135m-instruct")
  except FileNotFoundError:
    pass
  try:
    return pretrained.fetch("smollm2")
  except (FileNotFoundError, OSError) as e:
    pytest.skip(f"SmolLM2 GGUF not on this machine and `holojax fetch smollm2` failed: {e}")


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
  """(model float32, tokenizer)."""
  from holojax.models import load_pretrained
  return load_pretrained("smollm2-135m-instruct", path=smollm2_path)


@pytest.fixture(scope="session")
def hf_reference(smollm2_path):
  """(transformers model float32, its tokenizer) from the same GGUF."""
  with _installed_kernels_package():
    pytest.importorskip("torch", reason="parity reference: pip install torch (CPU) transformers")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import torch
    torch.manual_seed(0)
    kw = {"gguf_file": smollm2_path.name}
    with _parse_gguf_once():
      tok = transformers.AutoTokenizer.from_pretrained(str(smollm2_path.parent), **kw)
      model = transformers.AutoModelForCausalLM.from_pretrained(str(smollm2_path.parent),
                                                                dtype=torch.float32, **kw)
  return model.eval(), tok


@contextlib.contextmanager
def _installed_kernels_package():
  """The repository root off ``sys.path`` while transformers loads.

  transformers imports Hugging Face's ``kernels`` distribution when it is
  installed (transformers 5 pulls it in). pytest puts the repository root on
  ``sys.path``, where our own ``kernels/`` folder (installed as
  ``holojax.kernels``) would shadow it and the import fails; a user's
  process, whose path does not hold the repository, never sees ours."""
  root = Path(__file__).resolve().parents[2]
  saved = list(sys.path)
  sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != root]
  ours = sys.modules.get("kernels")
  if ours is not None and Path(getattr(ours, "__file__", None) or ".").resolve().parent == (
      root / "kernels"):
    del sys.modules["kernels"]
  try:
    yield
  finally:
    sys.path[:] = saved


@contextlib.contextmanager
def _parse_gguf_once():
  """transformers builds a stock ``gguf.GGUFReader`` of the same file three times
  (tokenizer, config, weights) and a ``TensorNameMap`` once per submodule (~400):
  ~35 s of a ~45 s load. Within this block both are built once and shared (the
  stock classes, read-only use), so the reference is the same as without it."""
  import gguf
  readers, name_maps = {}, {}
  stock_reader, stock_map = gguf.GGUFReader, gguf.get_tensor_name_map

  def reader(path, mode="r"):
    key = (str(path), mode)
    if key not in readers:
      readers[key] = stock_reader(path, mode)
    return readers[key]

  def name_map(arch, n_blocks):
    if (arch, n_blocks) not in name_maps:
      name_maps[arch, n_blocks] = stock_map(arch, n_blocks)
    return name_maps[arch, n_blocks]

  gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map
  try:
    yield
  finally:
    gguf.GGUFReader, gguf.get_tensor_name_map = stock_reader, stock_map


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _teacher_forced(graphdef, state, ids, p, kind, max_len):
  model = nnx.merge(graphdef, state)
  logits_bv, cache = model.prefill(ids[:, :p], model.init_cache(ids.shape[0], max_len, kind))

  def body(cache, tok_b):
    logits_bv, cache = model.step(tok_b, cache)
    return cache, logits_bv

  cache, logits_tbv = jax.lax.scan(body, cache, ids[:, p:].T)
  return jnp.concatenate([logits_bv[:, None], logits_tbv.transpose(1, 0, 2)], 1), cache


@pytest.fixture(scope="session")
def decode_logits():
  """``decode_logits(model, ids, kind, p, max_len=64)``: prefill ids[:, :p] into a
  cache of ``kind``, then one step per remaining token (one jitted scan):
  (logits [B, T - p + 1, V], cache)."""
  def run(model, ids, kind, p, max_len=64):
    graphdef, state = nnx.split(model)
    return _teacher_forced(graphdef, state, ids, p, kind, max_len)
  return run
