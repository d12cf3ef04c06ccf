"""Short commands import only what they use: the work a command skips, asserted (not its time).

Each probe runs in a fresh interpreter, since this test session has long since imported
everything. The figures themselves are in ``tests/benchmarks/RESULTS.md`` ("Import time").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import collector_plugin.export as export

EXPORT_PATH = (
    "google.protobuf",
    "grpc",
    "collector_plugin.export.pipeline",
    "collector_plugin.export.transports",
    "collector_plugin.otlp",
    "collector_plugin.simulator",
)
"""Sending and simulating: no command that only reads a config or lists things needs these."""

PLUGINS_AND_CONFIG = (
    "httpx",
    "pydantic",
    "yaml",
    "asyncio",
    "collector_plugin.config",
    "collector_plugin.sources",
)
"""What the plugins and the config parser bring: ``--version`` needs none of it."""

PROBE = """
import json, sys
from collector_plugin.cli import main
argv = json.loads(sys.argv[1])
code = None
if argv is not None:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
with open(sys.argv[2], "w") as out:
    json.dump({"code": code, "modules": sorted(sys.modules)}, out)
"""


def _probe(tmp_path: Path, argv: list[str] | None) -> tuple[object, set[str]]:
    """Import the CLI (and run ``argv`` through ``main``) in a new interpreter: its exit code, modules."""
    report = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv), str(report)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(report.read_text())
    return result["code"], set(result["modules"])


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return [name for name in names if name in modules]


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        "modelarts: {region: r, project_id: p, endpoint: 'http://127.0.0.1:9', auth: {token: t}}\n"
        f"checkpoint: {{path: '{tmp_path / 'checkpoints.db'}'}}\n"
        "telemetry: {listen: ''}\n"
    )
    return config


@pytest.mark.parametrize("argv", [None, ["--version"]], ids=["import", "--version"])
def test_importing_the_cli_and_version_load_no_plugin_config_or_export_code(
    tmp_path: Path, argv: list[str] | None
) -> None:
    code, modules = _probe(tmp_path, argv)
    assert code == (None if argv is None else 0)
    assert _loaded(modules, EXPORT_PATH + PLUGINS_AND_CONFIG) == []
    assert "collector_plugin.cli" in modules


@pytest.mark.parametrize(
    ("argv", "expected_code"),
    [
        (["--help"], 0),
        (["sources"], 0),
        (["tail", "--help"], 0),
        (["validate", "--config", "{config}"], 0),
        (["healthcheck", "--config", "{config}"], 1),  # telemetry.listen "": nothing to probe
    ],
    ids=["--help", "sources", "tail --help", "validate", "healthcheck"],
)
def test_short_commands_load_neither_the_exporter_nor_the_simulator(
    tmp_path: Path, argv: list[str], expected_code: int
) -> None:
    config = _config(tmp_path)
    code, modules = _probe(tmp_path, [arg.format(config=config) for arg in argv])
    assert code == expected_code
    assert _loaded(modules, EXPORT_PATH) == []
    assert "collector_plugin.sources.modelarts.task_logs" in modules  # the probe does see what is imported


def test_help_still_lists_the_plugins_commands(capsys: pytest.CaptureFixture[str]) -> None:
    from collector_plugin.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    commands = capsys.readouterr().out.split("COMMAND", 2)[2]
    assert {"tail", "backfill", "validate", "run"} <= set(commands.split())


def test_every_public_export_name_resolves_to_its_modules_object() -> None:
    import importlib

    homes = {name: module for module, names in export._HOMES.items() for name in names}
    assert sorted(homes) == sorted(export.__all__)
    for name, module in homes.items():
        assert getattr(export, name) is getattr(importlib.import_module(f"collector_plugin.export.{module}"), name)
    assert set(export.__all__) <= set(dir(export))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        export.nope  # noqa: B018
