"""The one backend chooser: default order, forced names, sequences, the alias."""

import pytest

from holojax.kernels.backend import Backend, Unsupported, candidates, select

ORDER = ("triton", "xla")


def _backends(runs=("xla", "interpret")):
  def check(name):
    def fn(x, *, why="no GPU"):
      del x
      if name not in runs:
        raise Unsupported(f"{name}: {why}")
    return fn
  return tuple(Backend(n, check(n), lambda x, n=n, **kw: (n, x))
               for n in ("xla", "triton", "interpret"))


def test_default_order_falls_back():
  assert select("op", _backends(), None, ORDER, 1).name == "xla"
  assert select("op", _backends(runs=("xla", "triton")), None, ORDER, 1).name == "triton"
  chosen = select("op", _backends(), None, ORDER, 1)
  assert chosen.fn(3) == ("xla", 3)


def test_check_gets_the_arguments():
  with pytest.raises(ValueError, match="triton: too long"):
    select("op", _backends(), "triton", ORDER, 1, why="too long")


def test_forced_name_that_cannot_run_names_the_reason():
  with pytest.raises(ValueError, match=r"^op: implementation='triton' cannot run here: "
                                       r"triton: no GPU$"):
    select("op", _backends(), "triton", ORDER, 1)
  assert select("op", _backends(), "interpret", ORDER, 1).name == "interpret"


def test_sequence_tries_in_order_and_lists_every_reason():
  assert select("op", _backends(), ["triton", "interpret", "xla"], ORDER, 1).name == "interpret"
  assert select("op", _backends(), ("xla", "interpret"), ORDER, 1).name == "xla"
  with pytest.raises(ValueError, match=r"no implementation of \('triton', 'interpret'\) can run "
                                       r"here: triton: .*; interpret: "):
    select("op", _backends(runs=("xla",)), ("triton", "interpret"), ORDER, 1)


def test_pallas_alias_means_the_compiled_gpu_backends():
  assert candidates("op", ("xla", "triton", "interpret"), "pallas", ORDER) == ("triton",)
  assert select("op", _backends(runs=("triton",)), "pallas", ORDER, 1).name == "triton"
  with pytest.raises(ValueError, match="implementation='pallas' cannot run here: triton: "):
    select("op", _backends(), "pallas", ORDER, 1)
  with pytest.raises(ValueError, match="'pallas' is not one of"):  # an op without a GPU kernel
    candidates("op", ("xla",), "pallas", ("xla",))


@pytest.mark.parametrize("bad", ["cuda", ["xla", "mosaic"], [], 3, [1]])
def test_unknown_names_list_the_choices(bad):
  with pytest.raises(ValueError, match=r"op: implementation=.*\('xla', 'triton', 'interpret', "
                                       r"'pallas'\)"):
    select("op", _backends(), bad, ORDER, 1)


def test_unsupported_is_a_not_implemented_error():
  assert issubclass(Unsupported, NotImplementedError)
