"""Build the one compiled module; everything else is in pyproject.toml.

``appliance.tcmu._fastring`` is the ring thread's fast path for plain
READ/WRITE (see its source).  It is optional: without a C compiler the
package installs and runs on the pure-Python ring path, which is the
reference the compiled one is tested against.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "appliance.tcmu._fastring",
            ["appliance/tcmu/_fastring.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
