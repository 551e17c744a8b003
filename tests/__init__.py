"""The test suite, laid out like the code it tests (docs/architecture.md, "Tests").

A package (every folder has an ``__init__.py``), so that test modules in different folders
may share a basename and import shared code by its full name: ``from tests.support.mmio_bench
import make_bench``.
"""
