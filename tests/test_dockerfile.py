"""The container image, as far as it can be checked without a Docker engine.

The Dockerfile is parsed and checked (slim base, non-root numeric user, wheel install, entrypoint
at the fixed config path); the wheel it installs is built for real and inspected.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
CONFIG_PATH = "/etc/modelarts-receiver/config.yaml"
RUN_COMMAND = ["modelarts-receiver", "run", "--config", CONFIG_PATH]


@dataclass
class Stage:
    image: str
    name: str = ""
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], rest)
            parts = image.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else ""))
        else:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())[1]


def test_every_stage_uses_a_slim_python_base(stages: list[Stage]) -> None:
    assert stages
    for stage in stages:
        assert re.fullmatch(r"python:3\.1[0-9]+-slim(-\w+)?", stage.image), stage.image


def test_the_final_stage_runs_as_a_non_root_numeric_user(stages: list[Stage]) -> None:
    users = stages[-1].all("USER")
    assert users, "the final stage must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0
    assert not gid or (gid.isdigit() and int(gid) > 0)
    run = " ".join(stages[-1].all("RUN"))
    assert f"--uid {uid}" in run, "the user must exist in /etc/passwd"
    assert f"chown {uid}:" in run and "/var/lib/modelarts-receiver" in run


def test_the_package_is_installed_from_a_wheel_built_in_the_first_stage(stages: list[Stage]) -> None:
    build, final = stages[0], stages[-1]
    assert build.name
    assert any("pip wheel" in r and "--no-deps" in r for r in build.all("RUN"))
    copies = final.all("COPY")
    assert any(c.startswith(f"--from={build.name} ") and ".whl" in c for c in copies)
    assert any(re.search(r"pip install .*\.whl", r) for r in final.all("RUN"))
    assert not any("pip install ." in r or "pip install -e" in r for r in final.all("RUN"))


def test_entrypoint_runs_the_receiver_with_the_fixed_config_path(stages: list[Stage]) -> None:
    final = stages[-1]
    entrypoint = json.loads(final.all("ENTRYPOINT")[-1])
    cmd = json.loads(final.all("CMD")[-1])
    assert entrypoint + cmd == RUN_COMMAND
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint[0] in scripts
    port = final.all("EXPOSE")[-1].split("/")[0]
    assert port == "8888", "the default telemetry.listen"
    (healthcheck,) = final.all("HEALTHCHECK")
    probe = json.loads(healthcheck.split("CMD", 1)[1])
    assert probe[:2] == [entrypoint[0], "healthcheck"], "the probe reads the port from the config"
    env = " ".join(final.all("ENV"))
    assert f"MODELARTS_RECEIVER_CONFIG={CONFIG_PATH}" in env, "healthcheck finds the config run is given"


def _config_listening(path: Path, listen: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "modelarts": {"endpoint": "http://127.0.0.1:9", "project_id": "p", "auth": {"token": "t"}},
                "telemetry": {"listen": listen},
            }
        )
    )
    return path


def test_healthcheck_probes_the_port_the_config_listens_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from collector_plugin.cli import main
    from collector_plugin.telemetry import Metrics, TelemetryServer

    server = TelemetryServer("127.0.0.1:0", Metrics(), lambda: (True, "ready"))
    server.start()
    port = server.port
    try:
        config = _config_listening(tmp_path / "c.yaml", f"0.0.0.0:{port}")
        assert main(["healthcheck", "--config", str(config)]) == 0
        assert capsys.readouterr().out.strip() == f"http://127.0.0.1:{port}/healthz: 200"
    finally:
        server.stop()
    assert main(["healthcheck", "--config", str(config)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: http://127.0.0.1:{port}/healthz: ")
    assert main(["healthcheck", "--config", str(_config_listening(tmp_path / "off.yaml", ""))]) == 1
    assert "there is no /healthz" in capsys.readouterr().err


def test_healthcheck_follows_the_sidecar_example_port() -> None:
    from collector_plugin.cli import health_url

    manifest = yaml.safe_load((ROOT / "examples/opentelemetry-collector-chart/receiver-configmap.yaml").read_text())
    listen = yaml.safe_load(manifest["data"]["config.yaml"])["telemetry"]["listen"]
    values = yaml.safe_load((ROOT / "examples/opentelemetry-collector-chart/values.yaml").read_text())
    (container,) = values["extraContainers"]
    (port,) = [p["containerPort"] for p in container["ports"]]
    assert health_url(listen) == f"http://127.0.0.1:{port}/healthz"


def test_dockerignore_keeps_what_the_wheel_needs() -> None:
    ignored = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"
    }
    for needed in ("collector_plugin", "pyproject.toml", "README.md"):
        assert needed not in ignored
    assert {".git", "tests"} <= ignored


def test_the_cli_run_command_accepts_the_config_option() -> None:
    try:
        import collector_plugin.cli  # noqa: F401
    except ImportError:
        pytest.skip("collector_plugin.cli is not written yet")
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from collector_plugin.cli import main; sys.exit(main())", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel the Dockerfile builds, from a copy of the sources (the tree stays clean)."""
    src = tmp_path_factory.mktemp("src")
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copytree(ROOT / "collector_plugin", src / "collector_plugin", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src)
    if not (src / "README.md").exists():  # pyproject names it as the long description
        (src / "README.md").write_text("# modelarts-otel-receiver\n")
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = out.glob("*.whl")
    return built


def test_the_wheel_carries_py_typed_every_module_and_the_console_script(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "collector_plugin/py.typed" in names
        sources = {
            p.relative_to(ROOT).as_posix()
            for p in (ROOT / "collector_plugin").rglob("*.py")
            if "__pycache__" not in p.parts
        }
        assert sources <= names, sorted(sources - names)
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        text = zf.read(entry_points).decode()
    assert "[console_scripts]" in text
    assert re.search(r"^modelarts-receiver = collector_plugin\.cli:main$", text, re.MULTILINE)


def test_the_wheel_declares_the_runtime_dependencies(wheel: Path) -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    with zipfile.ZipFile(wheel) as zf:
        (metadata,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [
            line.split(":", 1)[1].strip()
            for line in zf.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line
        ]
    norm = lambda s: re.split(r"[<>=!~ ;\[]", s, maxsplit=1)[0].lower().replace("_", "-")  # noqa: E731
    assert sorted(map(norm, requires)) == sorted(map(norm, declared))


def test_the_package_imports_from_the_wheel_alone(wheel: Path, tmp_path: Path) -> None:
    code = (
        "import collector_plugin, collector_plugin.config, collector_plugin.telemetry, collector_plugin.logs;"
        "print(collector_plugin.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(wheel)!r}); {code}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(wheel))
