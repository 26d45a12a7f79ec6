"""The package list: every package under holojax/, kernels/ and train/.

``kernels/`` and ``train/`` install as ``holojax.kernels`` and
``holojax.train`` (``package-dir`` in pyproject.toml, where everything else
is declared); a new subpackage in any of the three needs no edit here.
"""

from setuptools import find_packages, setup

ROOTS = {"holojax": "holojax", "holojax.kernels": "kernels", "holojax.train": "train"}

setup(packages=[f"{name}.{sub}" if sub else name for name, folder in ROOTS.items()
                for sub in ("", *find_packages(folder))])
