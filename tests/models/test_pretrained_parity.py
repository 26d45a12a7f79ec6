"""SmolLM2-135M-Instruct against transformers' GGUF loader (torch on CPU, float32).

Skipped without torch/transformers (`pip install torch transformers accelerate`;
.ci/run installs the CPU torch wheel from /opt/wheels when it is there) or when the
model file cannot be fetched.
"""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from holojax.models import generate
from tests.models.conftest import PROMPTS


@nnx.jit
def _forward(model, ids):
  return model(ids)


def parity(model, tok, ref):
  """(fraction of positions with equal argmax, max over prompts of the last-position
  |ours - theirs| / max |theirs|), the prompts right-padded into one batch (one compile)."""
  import torch
  ids = [tok.encode(t) for t in PROMPTS]
  n = max(map(len, ids))
  batch = np.array([x + [0] * (n - len(x)) for x in ids], np.int32)
  ours = np.asarray(_forward(model, jnp.asarray(batch)))
  agree, total, last_err = 0, 0, 0.0
  for i, x in enumerate(ids):
    with torch.no_grad():
      theirs = ref(torch.tensor([x])).logits[0].float().numpy()
    mine = ours[i, :len(x)]
    agree += int((mine.argmax(-1) == theirs.argmax(-1)).sum())
    total += len(x)
    last_err = max(last_err, float(np.abs(mine[-1] - theirs[-1]).max() / np.abs(theirs[-1]).max()))
  return agree / total, last_err


def test_logits_match_transformers(smollm2, hf_reference):
  model, tok = smollm2
  agree, last_err = parity(model, tok, hf_reference[0])
  assert agree >= 0.99, f"argmax equal at {agree:.2%} of positions"
  assert last_err < 0.02, f"last-position logits differ by {last_err:.2%} of their max"


def test_greedy_generation_matches_transformers(smollm2, hf_reference):
  import torch
  model, tok = smollm2
  ref, _ = hf_reference
  ids = tok.encode(PROMPTS[0])
  ours = np.asarray(generate(model, jnp.asarray([ids], jnp.int32), 24))[0, len(ids):]
  with torch.no_grad():  # stops at <|im_end|>; ours runs on: compare what both wrote
    theirs = ref.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                          pad_token_id=2)[0, len(ids):].numpy()
  assert len(theirs) >= 8, tok.decode(theirs)
  assert ours[:len(theirs)].tolist() == theirs.tolist(), (tok.decode(ours), tok.decode(theirs))


def test_tokenizer_matches_transformers(smollm2, hf_reference):
  _, tok = smollm2
  _, ref_tok = hf_reference
  texts = PROMPTS + ["  leading spaces, tabs\t and\nnewlines\n\n", "Ünïcödé — 東京 🙂 $3.14",
                     "x<|im_end|>y <|endoftext|>"]
  for text in texts:
    assert tok.encode(text) == ref_tok.encode(text, add_special_tokens=False), text
  msgs = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
          {"role": "user", "content": "Name a colour."}]
  for m in (msgs, [{"role": "system", "content": "Be brief."}, *msgs]):
    for gen in (False, True):
      assert tok.apply_chat_template(m, add_generation_prompt=gen) == \
          ref_tok.apply_chat_template(m, add_generation_prompt=gen, tokenize=False)
