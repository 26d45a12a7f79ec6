import numpy as np
import pytest

from holojax import data


def _write_corpus(root, n_files=40):
  for i in range(n_files):
    (root / f"mod_{i:03d}.py").write_text(f"def f{i}(x):\n    return x * {i}  # line\n" * 20)


def test_default_corpus_is_stdlib_text():
  c = data.load_corpus(max_bytes=500_000)
  assert c.vocab_size == 256
  assert len(c.train) + len(c.val) >= 500_000 and len(c.train) > 0 and len(c.val) > 0
  assert b"def " in c.train[:100_000].tobytes()


def test_split_is_by_file_and_deterministic(tmp_path):
  _write_corpus(tmp_path)
  a = data.load_corpus(tmp_path, val_fraction=0.2)
  b = data.load_corpus(tmp_path, val_fraction=0.2)
  np.testing.assert_array_equal(a.train, b.train)
  np.testing.assert_array_equal(a.val, b.val)
  assert a.train_files + a.val_files == 40
  assert 1 <= a.val_files < 20
  # Whole files: every validation file's text is absent from train.
  val_docs = a.val.tobytes().split(b"\0")
  assert all(doc not in a.train.tobytes() for doc in val_docs)


def test_single_file_splits_bytes(tmp_path):
  f = tmp_path / "book.txt"
  f.write_text("abcdefghij" * 1000)
  c = data.load_corpus(f, val_fraction=0.1)
  assert len(c.train) == 9000 and len(c.val) == 1000


@pytest.mark.parametrize("content", [None, b"\xff\xfe\x00binary", b"   \n"])
def test_corpus_without_text_is_a_clear_error(tmp_path, content):
  if content is not None:
    (tmp_path / "x.txt").write_bytes(content)
  with pytest.raises(ValueError, match="no readable UTF-8 text"):
    data.load_corpus(tmp_path)


def test_missing_path_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    data.load_corpus(tmp_path / "nope")


def test_batches_are_a_function_of_seed_and_index():
  tokens = np.arange(10_000, dtype=np.int64) % 251
  ds = data.PackedBatches(tokens.astype(np.uint8), seq_len=16, batch_size=4, seed=3)
  again = data.PackedBatches(tokens.astype(np.uint8), seq_len=16, batch_size=4, seed=3)
  for k in (0, 7, ds.n_seq // 4 + 3):  # the last one is in the second epoch
    np.testing.assert_array_equal(ds.batch(k), again.batch(k))
  assert ds.batch(0).shape == (4, 17) and ds.batch(0).dtype == np.int32
  # Targets are the next tokens of the inputs: the stream is contiguous.
  b = ds.batch(5)
  np.testing.assert_array_equal((b[:, 1:].astype(int) - b[:, :-1]) % 251, 1)
  # Each epoch visits every sequence once.
  per_epoch = ds.n_seq // 4
  seen = np.concatenate([ds.sequence_ids(k) for k in range(per_epoch)])
  assert len(np.unique(seen)) == len(seen)
  other = data.PackedBatches(tokens.astype(np.uint8), seq_len=16, batch_size=4, seed=4)
  assert not np.array_equal(ds.batch(0), other.batch(0))


def test_too_short_stream_is_a_clear_error():
  with pytest.raises(ValueError, match="train split has 10 tokens.*17"):
    data.PackedBatches(np.zeros(10, np.uint8), seq_len=16, batch_size=2)
  with pytest.raises(ValueError, match="validation split has 10 tokens"):
    data.eval_batches(np.zeros(10, np.uint8), seq_len=16, batch_size=2, num_batches=1)


def test_out_of_vocabulary_ids_are_refused():
  with pytest.raises(ValueError, match=r"\[-1, 5\].*\[0, 255\]"):
    data.PackedBatches(np.array([-1, 5] * 20), seq_len=4, batch_size=2, vocab_size=256)


def test_binary_files_are_not_text(tmp_path):
  (tmp_path / "a.txt").write_bytes(b"abc\x00def")
  with pytest.raises(ValueError, match="NUL"):
    data.load_corpus(tmp_path)


def test_encode_decode_roundtrip():
  text = "holographic ∑ memory\n"
  assert data.decode(data.encode(text)) == text
