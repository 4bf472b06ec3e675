"""The C part of the package: the search of find_path (nexus_streams/domain/_pathcore.c).

Everything else is declared in pyproject.toml. The extension is optional: without a C
compiler the install goes on and find_path runs its pure-Python search (algorithms.NATIVE).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "nexus_streams.domain._pathcore",
            ["nexus_streams/domain/_pathcore.c"],
            optional=True,
        )
    ]
)
