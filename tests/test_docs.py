"""Documentation cannot rot: every hook is documented in README.md and has a test of its own."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from collector_plugin import hookspecs

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def _hookspecs() -> list[Callable[..., Any]]:
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    specs = [fn for _, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, marker)]
    assert specs, "no hook specs found: the marker name changed?"
    return specs


def _plugin_hooks_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Plugin hooks\n(.*?)(?=^## )", readme, flags=re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Plugin hooks' section"
    return match.group(1)


def _heading(fn: Callable[..., Any]) -> str:
    return f"{fn.__name__}({', '.join(inspect.signature(fn).parameters)})"


HOOKS = [pytest.param(fn, id=fn.__name__) for fn in _hookspecs()]


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_in_the_readme(hook: Callable[..., Any]) -> None:
    """A ``### name(args)`` heading in "Plugin hooks", followed by a description."""
    section = _plugin_hooks_section()
    match = re.search(rf"^### {re.escape(_heading(hook))}\s*\n(.*?)(?=^### |\Z)", section, re.MULTILINE | re.DOTALL)
    assert match, f"README.md 'Plugin hooks' lacks the heading '### {_heading(hook)}'"
    description = match.group(1).split("```", 1)[0].strip()
    assert len(description.split()) >= 10, f"README.md: '### {_heading(hook)}' has no description"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test_of_its_own(hook: Callable[..., Any]) -> None:
    wanted = re.compile(rf"^(async )?def test_hook_{hook.__name__}\b", re.MULTILINE)
    found = [p.name for p in TESTS.glob("test_*.py") if wanted.search(p.read_text(encoding="utf-8"))]
    assert found, f"no test named test_hook_{hook.__name__} in tests/"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_docstring_is_pytest_style(hook: Callable[..., Any]) -> None:
    """A summary line, ``:param:`` for every argument and ``:returns:``."""
    doc = inspect.getdoc(hook) or ""
    assert doc.splitlines() and doc.splitlines()[0].strip(), f"{hook.__name__}: no summary line"
    for param in inspect.signature(hook).parameters:
        assert f":param {param}:" in doc, f"{hook.__name__}: no ':param {param}:'"
    assert ":returns:" in doc, f"{hook.__name__}: no ':returns:'"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_fully_typed(hook: Callable[..., Any]) -> None:
    signature = inspect.signature(hook)
    untyped = [name for name, p in signature.parameters.items() if p.annotation is inspect.Parameter.empty]
    assert not untyped, f"{hook.__name__}: untyped parameters {untyped}"
    assert signature.return_annotation is not inspect.Signature.empty, f"{hook.__name__}: no return type"


def _metrics_rows() -> dict[str, tuple[str, str]]:
    """The README's metrics table: name -> (type, labels)."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Self-telemetry", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| (counter|gauge|histogram) \| ([^|]*) \|", section, flags=re.MULTILINE)
    return {name: (kind, labels.strip()) for name, kind, labels in rows}


def test_every_metric_is_in_the_readme_with_its_type_and_labels() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from collector_plugin.telemetry import PREFIX, Metrics

    exposed = {}
    for metric in vars(Metrics()).values():
        if isinstance(metric, MetricWrapperBase):
            name = metric._name.removeprefix(PREFIX) + ("_total" if metric._type == "counter" else "")
            exposed[name] = (metric._type, ", ".join(f"`{label}`" for label in metric._labelnames))
    assert _metrics_rows() == exposed
