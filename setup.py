# The C core is built by cffi; everything else is in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["cext/build.py:ffibuilder"])
