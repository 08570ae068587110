"""The C part of violin-switch: the per-frame data path (violin/_datapath.c), linked with
libsodium and OpenSSL's libcrypto. Building it needs a C compiler, the Python headers,
libsodium-dev and libssl-dev (packaging/apt-packages.txt); the rest is in pyproject.toml."""

import os

from setuptools import Extension, setup

DATAPATH = Extension(
    "violin._datapath",
    sources=["violin/_datapath.c"],
    libraries=["sodium", "crypto"],
    py_limited_api=True,  # the stable ABI of Python 3.11 (Py_LIMITED_API in the source)
    # no debug info and no build paths: the same source gives the same wheel wherever it is
    # built, so the role that copies it stays idempotent
    extra_compile_args=["-O2", "-g0", f"-ffile-prefix-map={os.getcwd()}=.", "-std=gnu11", "-Wall",
                        "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers",
                        "-Wno-cast-function-type"],
)

# one wheel (cp311-abi3) that loads in every Python >= 3.11
setup(ext_modules=[DATAPATH], options={"bdist_wheel": {"py_limited_api": "cp311"}})
