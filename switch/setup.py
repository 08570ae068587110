"""The C part of violin-switch: the per-frame data path (violin/_datapath.c), linked with
libsodium and OpenSSL's libcrypto. Building it needs a C compiler, the Python headers,
libsodium-dev and libssl-dev
(packaging/apt-packages.txt); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension(
        "violin._datapath",
        sources=["violin/_datapath.c"],
        libraries=["sodium", "crypto"],
        extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                            "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
    ),
])
