"""The `>>>` examples in the package's docstrings run, so an example that no longer holds fails the suite.

pytest's `--doctest-modules` would import `gateway/app.py` as a module `gateway.app` (the folders map to
`minigate.<room>` only through setuptools' package-dir), a second copy beside `minigate.gateway.app`; so
each module is imported by its real name and its docstrings run with the standard library's doctest.
Examples marked `# doctest: +SKIP` (they need a file, a server or a model) stay skipped.
"""

from __future__ import annotations

import doctest
import importlib

import pytest

from tests.test_boundaries import sources

MODULES = [source.name for source in sources()]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_hold(name: str) -> None:
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    for test in doctest.DocTestFinder().find(module):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)


def test_the_examples_are_found() -> None:
    """Guards against a walk that finds no module, or a finder that finds no example: nothing would fail."""
    examples = sum(len(test.examples) for name in MODULES
                   for test in doctest.DocTestFinder().find(importlib.import_module(name)))
    assert examples >= 100
