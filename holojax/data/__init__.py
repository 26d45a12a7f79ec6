from holojax.data.spirals import make_spirals  # noqa: F401
