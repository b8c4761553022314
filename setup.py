"""Build the compiled modules; everything else is in pyproject.toml.

``appliance.tcmu._fastring`` is the ring thread's fast path for plain
READ/WRITE, ``appliance.engine._writerun`` packs a run of journal records
in one call (see their sources).  Both are optional: without a C compiler
the package installs and runs on the pure-Python paths, which are the
reference the compiled ones are tested against.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "appliance.tcmu._fastring",
            ["appliance/tcmu/_fastring.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
        Extension(
            "appliance.engine._writerun",
            ["appliance/engine/_writerun.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
    ]
)
