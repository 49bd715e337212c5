"""Every public function and class documents itself numpy-style with a runnable example."""

import inspect

import pytest

import tera.theory
import tera.tn

PUBLIC = [(mod.__name__, name) for mod in (tera.tn, tera.theory) for name in mod.__all__]


@pytest.mark.parametrize(("module", "name"), PUBLIC)
def test_public_api_has_numpy_docstring_with_example(module, name):
    obj = getattr(__import__(module, fromlist=[name]), name)
    doc = inspect.getdoc(obj)
    assert doc, f"{module}.{name} has no docstring"
    assert "Examples\n--------\n>>>" in doc, f"{module}.{name} has no doctested Examples section"
    if inspect.isfunction(obj) and len(inspect.signature(obj).parameters) > 1:
        assert "Parameters\n----------" in doc or "Returns\n-------" in doc, (
            f"{module}.{name} documents neither parameters nor returns"
        )
