"""docker-compose.yml and the Dockerfiles, checked against the code (no Docker engine runs here).

Every command a service runs must exist in the ``lambdahat`` CLI with the options it passes; every
LAMBDAHAT_* variable must be a setting (or a variable the code reads); ports, volumes, healthchecks,
start order and the GPU workers' devices/queues/names must be consistent; every Dockerfile and
every COPY source must exist and survive .dockerignore.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"

# Compose specification keys this file may use (https://github.com/compose-spec/compose-spec).
TOP_LEVEL_KEYS = {"name", "services", "volumes", "secrets", "networks", "configs", "include"}
SERVICE_KEYS = {
    "image", "build", "command", "entrypoint", "environment", "env_file", "ports", "expose", "volumes",
    "depends_on", "healthcheck", "restart", "deploy", "profiles", "secrets", "configs", "init",
    "stop_grace_period", "stop_signal", "user", "working_dir", "networks", "labels", "logging", "ulimits",
    "shm_size", "tmpfs", "extra_hosts", "hostname", "container_name", "pull_policy", "cap_add", "cap_drop",
    "read_only", "security_opt", "ipc", "gpus",
}
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
RESTART_POLICIES = {"no", "always", "on-failure", "unless-stopped"}

# LAMBDAHAT_* variables the code reads directly (not Settings fields); each must appear in the source.
NON_SETTINGS_VARIABLES = {"LAMBDAHAT_QUEUE", "LAMBDAHAT_WORKER_NAME", "LAMBDAHAT_WORKER_DEVICE", "LAMBDAHAT_URL",
                          "LAMBDAHAT_API_KEY", "LAMBDAHAT_DEBUG", "LAMBDAHAT_TAG", "LAMBDAHAT_PORT"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict[str, Any]]:  # noqa: ANN001
    return compose["services"]


def lambdahat_commands(services: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    return {name: svc["command"] for name, svc in services.items()
            if isinstance(svc.get("command"), list) and svc["command"][:1] == ["lambdahat"]}


def gpu_workers(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services.items()
            if (svc.get("deploy") or {}).get("resources", {}).get("reservations", {}).get("devices")}


def option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def declared_packages() -> list[str]:
    """The top-level packages pyproject.toml installs (its ``packages.find`` include patterns)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    return [pattern.removesuffix("*") for pattern in patterns]


def dockerfile_of(service: dict[str, Any]) -> Path | None:
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return ROOT / build / "Dockerfile"
    return ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")


# -- syntax ------------------------------------------------------------------------------------------


def test_compose_file_is_valid_compose_syntax(compose, services) -> None:  # noqa: ANN001
    assert set(compose) - TOP_LEVEL_KEYS <= {k for k in compose if k.startswith("x-")}, set(compose)
    assert services, "no services"
    for name, svc in services.items():
        assert re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name), name
        unknown = set(svc) - SERVICE_KEYS
        assert not unknown, f"service {name}: unknown keys {unknown}"
        assert "image" in svc or "build" in svc, f"service {name} has neither image nor build"
        if "restart" in svc:
            assert svc["restart"] in RESTART_POLICIES, (name, svc["restart"])
        depends = svc.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: use the long depends_on form with conditions"
        for dependency, spec in depends.items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert spec["condition"] in DEPENDS_CONDITIONS, (name, spec)
        if "healthcheck" in svc:
            assert set(svc["healthcheck"]) <= HEALTHCHECK_KEYS, (name, svc["healthcheck"])
            test = svc["healthcheck"]["test"]
            assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), (name, test)
        for mapping in svc.get("ports") or []:
            assert re.fullmatch(r"(\$\{[A-Z_]+(:-\d+)?\}|\d+):\d+", str(mapping)), (name, mapping)
        for secret in svc.get("secrets") or []:
            assert secret in (compose.get("secrets") or {}), f"{name} uses undeclared secret {secret}"
    for secret in (compose.get("secrets") or {}).values():
        assert set(secret) == {"file"} and secret["file"].startswith("./secrets/")
    # Every ${VAR} interpolation is well formed (compose rejects "${VAR" or "${VAR:-" without "}").
    text = COMPOSE_FILE.read_text()
    for match in re.finditer(r"\$\{([^}]*)\}", text):
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*(:?[-?][^}]*)?", match.group(1)), match.group(0)
    assert text.count("${") == len(re.findall(r"\$\{[^}]*\}", text))


# -- commands -------------------------------------------------------------------------------------------


def test_every_command_exists_in_the_cli_with_the_options_it_passes(services) -> None:  # noqa: ANN001
    import typer

    from ops.cli import app

    root = typer.main.get_command(app)
    is_group = lambda c: hasattr(c, "commands")  # noqa: E731 - typer's click groups (typer may vendor click)
    commands = lambdahat_commands(services)
    assert {"migrate", "api"} <= set(commands), commands
    checked_paths = set()
    for service, argv in commands.items():
        command: Any = root
        words = argv[1:]
        path = []
        while is_group(command) and words and not words[0].startswith("-"):
            assert words[0] in command.commands, f"{service}: `lambdahat {' '.join(path + [words[0]])}` does not exist"
            command = command.commands[words[0]]
            path.append(words.pop(0))
        assert not is_group(command), f"{service}: `lambdahat {' '.join(path)}` is a group, not a command"
        known = {opt for param in command.params for opt in getattr(param, "opts", [])}
        for word in words:
            if word.startswith("--"):
                assert word.split("=", 1)[0] in known, f"{service}: `lambdahat {' '.join(path)}` has no option {word}"
        checked_paths.add(tuple(path))
    # And each really runs: `lambdahat <cmd> --help` exits 0.
    for path in sorted(checked_paths):
        result = subprocess.run([sys.executable, "-m", "ops.cli", *path, "--help"], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, (path, result.stderr)
        assert "Usage" in result.stdout


def test_every_lambdahat_variable_is_a_setting_or_read_by_the_code(compose, services) -> None:  # noqa: ANN001
    from backend.settings import Settings

    settings_variables = {f"LAMBDAHAT_{name.upper()}" for name in Settings.model_fields}
    source = "\n".join(p.read_text() for d in ("api", "backend", "worker", "client") for p in (ROOT / d).rglob("*.py"))
    used = set()
    for svc in services.values():
        used |= {k for k in environment(svc) if k.startswith("LAMBDAHAT_")}
    for anchor, value in compose.items():
        if anchor.startswith("x-") and isinstance(value, dict):
            used |= {k for k in value if str(k).startswith("LAMBDAHAT_")}
    for dockerfile in (ROOT / "docker").glob("*.Dockerfile"):
        used |= set(re.findall(r"\b(LAMBDAHAT_[A-Z_]+)=", dockerfile.read_text()))
    used |= set(re.findall(r"\$\{(LAMBDAHAT_[A-Z_]+)", COMPOSE_FILE.read_text()))
    assert used, "no LAMBDAHAT_* variables found"
    for variable in sorted(used):
        if variable in settings_variables:
            continue
        assert variable in NON_SETTINGS_VARIABLES, f"{variable} is neither a Settings field nor a known variable"
        if variable not in ("LAMBDAHAT_TAG", "LAMBDAHAT_PORT"):  # interpolated by compose itself
            assert variable in source, f"{variable} is not read anywhere in the code"


def test_environment_is_accepted_by_settings(services) -> None:  # noqa: ANN001
    """The values compose sets parse as Settings (no typo'd enum, no malformed number)."""
    from backend.settings import Settings

    for name, svc in lambdahat_services(services).items():
        env = {k: re.sub(r"\$\{[^}]*\}", "x", v) for k, v in environment(svc).items() if k.startswith("LAMBDAHAT_")}
        fields = {k.removeprefix("LAMBDAHAT_").lower(): v for k, v in env.items()
                  if k.removeprefix("LAMBDAHAT_").lower() in Settings.model_fields}
        settings = Settings(**fields)
        assert settings.log_format == "json", name
        assert not settings.embedded, f"{name}: the compose deployment is distributed (needs a broker)"
        assert settings.database_url.startswith("postgresql+psycopg://"), name


def lambdahat_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: services[name] for name in lambdahat_commands(services)}


# -- ports, volumes, health, order ------------------------------------------------------------------------


def test_api_port_healthcheck_and_public_bind(services) -> None:  # noqa: ANN001
    api = services["api"]
    command = api["command"]
    assert command[:2] == ["lambdahat", "serve"]
    assert option(command, "--host") == "0.0.0.0"
    port = option(command, "--port")
    assert [str(p).rsplit(":", 1)[1] for p in api["ports"]] == [port]
    health = " ".join(api["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/healthz" in health
    from api.app import create_app
    from backend.settings import Settings

    paths = set(create_app(Settings(database_url="sqlite://")).openapi()["paths"])
    assert {"/healthz", "/metrics", "/v1/status"} <= paths
    assert f"EXPOSE {port}" in dockerfile_of(api).read_text()
    # A public bind needs a key besides the local one (ops/serve.py): the api-key one-shot registers it first.
    key_service = services["api-key"]
    assert key_service["command"][:3] == ["lambdahat", "keys", "ensure"]
    secret_path = option(key_service["command"], "--key-file")
    assert secret_path == f"/run/secrets/{key_service['secrets'][0]}"
    assert api["depends_on"]["api-key"]["condition"] == "service_completed_successfully"


def test_infrastructure_healthchecks(services) -> None:  # noqa: ANN001
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    env = environment(services["api"])
    assert "@postgres:5432/" in env["LAMBDAHAT_DATABASE_URL"]
    assert env["LAMBDAHAT_BROKER_URL"].startswith("redis://redis:6379/")
    pg = environment(services["postgres"])
    assert f"{pg['POSTGRES_USER']}:" in env["LAMBDAHAT_DATABASE_URL"]
    assert env["LAMBDAHAT_DATABASE_URL"].endswith(f"/{pg['POSTGRES_DB']}")


def test_migrate_runs_once_before_api_and_workers(services) -> None:  # noqa: ANN001
    migrate = services["migrate"]
    assert migrate["command"] == ["lambdahat", "db", "upgrade"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, svc in lambdahat_services(services).items():
        if name == "migrate":
            continue
        assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    for name in ["api", *(n for n in services if n.startswith("worker"))]:
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_shared_artifact_volume(compose, services) -> None:  # noqa: ANN001
    declared = set(compose.get("volumes") or {})
    mounted = set()
    for name, svc in services.items():
        for mount in svc.get("volumes") or []:
            source, target = str(mount).split(":")[:2]
            assert target.startswith("/"), (name, mount)
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared volume {source}"
                mounted.add(source)
    assert mounted == declared, f"declared but unused volumes: {declared - mounted}"
    # API and every worker see the artifacts at LAMBDAHAT_ARTIFACT_DIR, on the same volume.
    runners = ["api", *(n for n in services if n.startswith("worker"))]
    for name in runners:
        artifact_dir = environment(services[name])["LAMBDAHAT_ARTIFACT_DIR"]
        assert f"artifacts:{artifact_dir}" in services[name]["volumes"], name


def test_one_gpu_worker_per_gpu(services) -> None:  # noqa: ANN001
    from worker.celery_worker import worker_argv

    workers = gpu_workers(services)
    assert len(workers) >= 1
    device_ids, names, own_queues = [], [], []
    for service_name, svc in workers.items():
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1, service_name
        assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"], service_name
        assert len(devices[0]["device_ids"]) == 1 and isinstance(devices[0]["device_ids"][0], str)
        device_ids.append(devices[0]["device_ids"][0])
        command = svc["command"]
        assert command[:2] == ["lambdahat", "worker"], service_name
        names.append(option(command, "--name"))
        queues = option(command, "--queues").split(",")
        assert queues[0] == "lambdahat", f"{service_name} must consume the queue the API sends to first"
        own_queues.append(tuple(queues[1:]))
        assert option(command, "--device") in ("cuda", "cuda:0"), service_name
        # The reserved GPU is the only one in the container, numbered 0.
        assert environment(svc)["CUDA_VISIBLE_DEVICES"] == "0", service_name
        assert dockerfile_of(svc).name == "worker.Dockerfile", service_name
    assert len(set(device_ids)) == len(device_ids), f"two workers share a GPU: {device_ids}"
    assert len(set(names)) == len(names) and None not in names, names
    assert all(own_queues) and len(set(own_queues)) == len(own_queues), own_queues
    # `lambdahat worker` is a prefork pool with one process and prefetch 1.
    argv = worker_argv("gpu0", "lambdahat,gpu0")
    assert {"--pool=prefork", "--concurrency=1", "--prefetch-multiplier=1"} <= set(argv)


def test_cpu_worker_is_optional(services) -> None:  # noqa: ANN001
    cpu = services["worker-cpu"]
    assert cpu.get("profiles") == ["cpu"]
    assert "deploy" not in cpu
    assert option(cpu["command"], "--device") == "cpu"
    assert option(cpu["command"], "--name") not in {option(s["command"], "--name") for s in gpu_workers(services).values()}


# -- Dockerfiles --------------------------------------------------------------------------------------------


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        if fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(relative, bare) or relative.split("/")[0] == pattern:
            return True
    return False


def test_dockerfiles_exist_and_their_copy_sources_exist(services) -> None:  # noqa: ANN001
    dockerfiles = {dockerfile_of(svc) for svc in services.values() if dockerfile_of(svc) is not None}
    assert {p.name for p in dockerfiles} == {"api.Dockerfile", "worker.Dockerfile"}
    patterns = dockerignore_patterns()
    for dockerfile in dockerfiles:
        assert dockerfile.is_file(), dockerfile
        text = dockerfile.read_text()
        copies = re.findall(r"^COPY\s+(?!--from)(.+)$", text, flags=re.MULTILINE)
        assert copies, dockerfile
        for line in copies:
            *sources, _target = line.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY source {source} does not exist"
                assert not ignored(source, patterns), f"{dockerfile.name}: COPY source {source} is in .dockerignore"
        # What `pip install .` needs: every package the project declares is copied.
        for package in declared_packages():
            assert any(package in line.split()[:-1] for line in copies), f"{dockerfile.name} does not COPY {package}"
        assert "pyproject.toml" in text and "README.md" in text


def test_api_image_has_cpu_torch_and_worker_image_cuda_torch(services) -> None:  # noqa: ANN001
    api_text = dockerfile_of(services["api"]).read_text()
    worker_text = dockerfile_of(next(iter(gpu_workers(services).values()))).read_text()
    assert re.search(r"TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cpu\b", api_text)
    assert re.search(r"TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu\d+", worker_text)
    for text in (api_text, worker_text):
        # torch is installed from the chosen index BEFORE the project (whose requirement could pull CUDA torch),
        # and the project with its server parts (a bare `pip install .` is the library and the SDK only).
        project = re.search(r'pip install "\.\[([^\]]*)\]"', text)
        assert project is not None and "server" in project.group(1).split(","), text
        assert text.index('--index-url "${TORCH_INDEX_URL}"') < project.start()
    # The torch version the images pin satisfies the project's requirement.
    import tomllib

    requirement = next(d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                       if d.startswith("torch"))
    pinned = re.search(r"TORCH_VERSION=([\d.]+)", api_text).group(1)
    low, high = re.search(r">=([\d.]+),<([\d.]+)", requirement).groups()
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(low) <= as_tuple(pinned) < as_tuple(high), (pinned, requirement)
