"""Builds the optional C kernel of the kinship pass (`llm_evo/kinship/_gram.c`).

Everything else is declared in pyproject.toml. The extension is optional: where it cannot be
compiled (no C compiler, or one without GCC's vector extensions) the install goes on and the
pass runs on numpy instead, with the same numbers, about twice as slow end to end.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "llm_evo.kinship._gram",
            sources=["llm_evo/kinship/_gram.c"],
            depends=["llm_evo/kinship/_gram_small.h"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
