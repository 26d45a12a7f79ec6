"""Synthetic recall tasks: MQAR and passkey (needle in a haystack), numpy.

Both return ``LMExamples(input_ids, labels)`` with HF-style labels: aligned
with input_ids, the model shifts (logits at t predict labels[t + 1]), and
-100 marks positions without a target. Everything is deterministic in
``seed``.

Example:
  >>> ex = mqar(2, seq_len=32, num_pairs=4, vocab_size=64, seed=0)
  >>> ex.input_ids.shape, int((ex.labels != -100).sum(1)[0])
  ((2, 32), 4)
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

IGNORE = -100


class LMExamples(NamedTuple):
  """A batch of language-modelling examples (numpy int32)."""

  input_ids: np.ndarray  # int32[N, T]
  labels: np.ndarray     # int32[N, T], IGNORE where there is no target


def mqar(num_examples: int, *, seq_len: int = 256, num_pairs: int = 16,
         vocab_size: int = 8192, power_a: float = 0.01,
         seed: int = 0) -> LMExamples:
  """Multi-query associative recall (Zoology, Arora et al. 2023).

  Layout of one example (T = seq_len, n = num_pairs, filler token 0):

    k_1 v_1 k_2 v_2 ... k_n v_n | 0 .. k_a 0 .. k_b 0 ... (queries)

  Keys are n distinct tokens of [1, V/2), values n distinct tokens of
  [V/2, V). Every key is queried once, in random order, at even offsets 2g
  of the query region; the gaps g are drawn without replacement with
  P(g) ~ a (g+1)^(a-1) (power law, a = power_a), so most queries come soon
  after the context and some far. The target of a query k at position t is
  its value, put in labels[t + 1] (the model shifts), the input there stays
  filler. Chance accuracy is 1/(V/2) per query (1/n if the model knows the
  stored values).

  Args:
    num_examples: N.
    seq_len: T >= 4 n.
    num_pairs: n key-value pairs (and queries) per example.
    vocab_size: V; needs n <= V/2 - 1.
    power_a: power-law exponent of the query gaps.
    seed: numpy seed.

  Returns:
    LMExamples with int32[N, T] arrays.
  """
  if num_pairs < 1:
    raise ValueError(f"num_pairs={num_pairs} must be positive")
  if seq_len < 4 * num_pairs:
    raise ValueError(f"seq_len={seq_len} must be >= 4 * num_pairs="
                     f"{4 * num_pairs}")
  half = vocab_size // 2
  if num_pairs > half - 1:
    raise ValueError(f"vocab_size={vocab_size} too small for num_pairs="
                     f"{num_pairs}: need num_pairs <= vocab_size // 2 - 1")
  if num_examples < 1:
    raise ValueError(f"num_examples={num_examples} must be positive")
  rng = np.random.default_rng(seed)
  n, ctx = num_pairs, 2 * num_pairs
  # n distinct keys / values per row: the first n of a random permutation.
  keys_nk = np.argsort(rng.random((num_examples, half - 1)), 1)[:, :n] + 1
  vals_nk = np.argsort(rng.random((num_examples, vocab_size - half)),
                       1)[:, :n] + half
  ids = np.zeros((num_examples, seq_len), np.int64)
  ids[:, 0:ctx:2] = keys_nk
  ids[:, 1:ctx:2] = vals_nk
  # Query gaps without replacement under the power law (Gumbel top-k).
  space = (seq_len - ctx) // 2
  logp_g = np.log(power_a) + (power_a - 1.0) * np.log(np.arange(1, space + 1))
  gumbel = -np.log(-np.log(rng.random((num_examples, space))))
  gaps_nk = np.argsort(-(logp_g[None, :] + gumbel), 1)[:, :n]
  order_nk = np.argsort(rng.random((num_examples, n)), 1)
  q_keys = np.take_along_axis(keys_nk, order_nk, 1)
  q_vals = np.take_along_axis(vals_nk, order_nk, 1)
  pos_nk = ctx + 2 * gaps_nk
  rows = np.arange(num_examples)[:, None]
  ids[rows, pos_nk] = q_keys
  labels = np.full_like(ids, IGNORE)
  labels[rows, pos_nk + 1] = q_vals
  return LMExamples(ids.astype(np.int32), labels.astype(np.int32))


_FILLER = (b"The grass is green. The sky is blue. The sun is yellow. "
           b"Here we go. There and back again. ")


def passkey(num_examples: int, *, seq_len: int = 1024, depth: float = 0.5,
            num_digits: int = 5, seed: int = 0) -> LMExamples:
  """Passkey retrieval / needle in a haystack, byte-level (vocab 256).

  [filler][needle][filler] "What is the pass key? The pass key is " DIGITS

  with needle = "The pass key is DIGITS. Remember it. DIGITS is the pass
  key. " at fraction ``depth`` of the filler (0 = start, 1 = just before
  the question). Labels are the answer digits (and -100 elsewhere), so
  accuracy is measured on the final num_digits tokens only.

  Args:
    num_examples: N.
    seq_len: exact example length in bytes.
    depth: needle depth in [0, 1].
    num_digits: passkey length.
    seed: numpy seed (the digits).

  Returns:
    LMExamples with int32[N, seq_len] arrays (byte values 0..255).
  """
  if not 0.0 <= depth <= 1.0:
    raise ValueError(f"depth={depth} must be in [0, 1]")
  if num_digits < 1:
    raise ValueError(f"num_digits={num_digits} must be positive")
  rng = np.random.default_rng(seed)
  question = b"What is the pass key? The pass key is "
  ids = np.zeros((num_examples, seq_len), np.int64)
  labels = np.full_like(ids, IGNORE)
  for i in range(num_examples):
    key = bytes(rng.integers(ord("0"), ord("9") + 1, num_digits).tolist())
    needle = b"The pass key is " + key + b". Remember it. " + key + (
        b" is the pass key. ")
    n_fill = seq_len - len(needle) - len(question) - num_digits
    if n_fill < 0:
      raise ValueError(f"seq_len={seq_len} too short for the needle and "
                       f"question ({seq_len - n_fill} bytes)")
    fill = (_FILLER * (n_fill // len(_FILLER) + 1))[:n_fill]
    cut = int(round(depth * n_fill))
    text = fill[:cut] + needle + fill[cut:] + question + key
    ids[i] = np.frombuffer(text, np.uint8)
    labels[i, -num_digits:] = ids[i, -num_digits:]
  return LMExamples(ids.astype(np.int32), labels.astype(np.int32))


def shifted_correct(logits_btv, labels_bt, *, ignore_index: int = IGNORE):
  """Per example: (#t with argmax logits[t] == labels[t + 1], #t counted).

  Works on numpy and jax arrays alike (inside ``jax.jit`` too); labels equal
  to ``ignore_index`` are not counted.

  Example:
    >>> lg = np.eye(3)[None]; lb = np.array([[-100, 0, 2]])
    >>> shifted_correct(lg, lb)
    (array([1]), array([2]))
  """
  xp = np if isinstance(logits_btv, np.ndarray) else jnp
  pred_bt = xp.argmax(logits_btv[:, :-1], -1)
  lb_bt = labels_bt[:, 1:]
  mask_bt = lb_bt != ignore_index
  return xp.sum((pred_bt == lb_bt) & mask_bt, axis=1), xp.sum(mask_bt, axis=1)


def shifted_accuracy(logits_btv, labels_bt, *, ignore_index: int = IGNORE
                     ) -> float:
  """Top-1 accuracy of argmax logits[t] against labels[t + 1] where counted.

  Example:
    >>> lg = np.eye(3)[None]; lb = np.array([[-100, 0, 2]])
    >>> shifted_accuracy(lg, lb)
    0.5
  """
  correct_b, count_b = shifted_correct(np.asarray(logits_btv),
                                       np.asarray(labels_bt),
                                       ignore_index=ignore_index)
  return float(correct_b.sum() / max(int(count_b.sum()), 1))
