"""docker-stack.yml, read by a real Compose parser (`docker-compose config`, no daemon needed), is a
stack that runs: every service healthy-checked, limited, updated with rollback; state pinned by node
label; credentials only from secrets; every command and setting it uses exists in the code."""
from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from control_plane.cli import cli
from control_plane.naming import TENANT_EVENTS_CHANNEL
from control_plane.settings import REQUIRED, Settings, read_setting

ROOT = Path(__file__).resolve().parent.parent
STACK_FILE = ROOT / "docker-stack.yml"
RAW = STACK_FILE.read_text()
OUR_IMAGE = "tenant-control-plane"
JOBS = ("migrate", "minio-init")
STATEFUL = ("catalog", "tenant-db-1", "redis", "minio")
# Read by libraries from the environment, not by our settings: boto3's credential chain and region.
LIBRARY_VARIABLES = {"AWS_SHARED_CREDENTIALS_FILE", "AWS_DEFAULT_REGION"}
# Variables that are credentials by name; URLs are checked by value (no user:password@ in them), and
# the catalog's and tenant servers' URLs always carry one, so they must be secrets too.
SENSITIVE = re.compile(r"PASSWORD|SECRET|TOKEN|KEYRING|ACCESS_KEY|ROOT_USER|DATABASE_URL|ADMIN_URL|REDIS_URL")


def _compose(*args: str, tag: str | None = "1.4.2") -> subprocess.CompletedProcess:
    assert shutil.which("docker-compose"), "docker-compose is missing: ./scripts/test installs it"
    env = {key: value for key, value in os.environ.items() if key != "CONTROL_PLANE_TAG"}
    if tag:
        env["CONTROL_PLANE_TAG"] = tag
    return subprocess.run(["docker-compose", "-f", str(STACK_FILE), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def stack() -> dict:
    result = _compose("config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def _ours(stack: dict) -> dict[str, dict]:
    return {name: service for name, service in stack["services"].items() if OUR_IMAGE in service["image"]}


def _settings_names() -> set[str]:
    source = (ROOT / "control_plane" / "settings.py").read_text()
    return set(REQUIRED) | set(re.findall(r'read_setting\("([A-Z0-9_]+)"', source))


def test_the_real_parser_accepts_it_and_requires_an_image_tag(stack):
    missing = _compose("config", tag=None)
    assert missing.returncode != 0 and "CONTROL_PLANE_TAG" in missing.stderr
    for name, service in stack["services"].items():
        assert not service["image"].endswith(":latest") and ":" in service["image"], name
    for image in re.findall(r"^\s*image:\s*(.+)$", RAW, re.M):
        assert "${" in image or image == "*control-plane-image", f"image {image} is not set from a variable"
    assert re.search(r"^x-image: &control-plane-image .*\$\{CONTROL_PLANE_TAG:\?", RAW, re.M)
    assert stack["services"]["api"]["image"] == "tenant-control-plane:1.4.2"


def test_services_and_replicas(stack):
    services = stack["services"]
    assert {"api", "worker", "scheduler", "migrate", "redis", "catalog", "tenant-db-1", "minio",
            "minio-init"} <= set(services)
    assert services["api"]["deploy"]["replicas"] >= 2 and services["worker"]["deploy"]["replicas"] >= 2
    schedulers = [name for name, s in services.items() if s.get("command", [])[:2] == ["tenantctl", "scheduler"]]
    assert schedulers == ["scheduler"] and services["scheduler"]["deploy"]["replicas"] == 1
    for job in JOBS:
        assert services[job]["deploy"]["mode"] == "replicated-job", job
    assert services["api"]["command"][0] == "gunicorn"
    tenant_db = " ".join(services["tenant-db-1"]["command"])
    assert "wal_level=logical" in tenant_db and "max_connections=500" in tenant_db


def test_health_limits_updates_and_placement(stack):
    for name, service in stack["services"].items():
        resources = service["deploy"]["resources"]
        assert resources["limits"]["memory"] and resources["limits"]["cpus"], name
        assert resources["reservations"]["memory"], name
        if name in JOBS:
            continue
        assert "test" in service["healthcheck"], name
        assert service["deploy"]["update_config"]["failure_action"] == "rollback", name
        assert "rollback_config" in service["deploy"], name
    api_check = " ".join(stack["services"]["api"]["healthcheck"]["test"])
    assert "/healthz" in api_check and "/readyz" not in api_check  # liveness, not readiness
    for name in ("api", "worker"):
        assert stack["services"][name]["deploy"]["update_config"]["order"] == "start-first", name
    for name in STATEFUL:
        constraints = stack["services"][name]["deploy"]["placement"]["constraints"]
        assert any(c.startswith("node.labels.") for c in constraints), name
    for name, service in stack["services"].items():
        if any(":" in volume if isinstance(volume, str) else volume.get("type") == "volume"
               for volume in service.get("volumes", [])) and name != "worker":  # worker: scratch only
            assert name in STATEFUL, f"{name} keeps state but is not pinned to a node"
    assert stack["networks"]["backend"]["driver_opts"]["encrypted"] == "true"


def test_credentials_come_only_from_secrets(stack, redis_conn):
    declared = set(stack["secrets"])
    assert all(secret.get("external") for secret in stack["secrets"].values())
    for name, service in stack["services"].items():
        environment = service.get("environment") or {}
        for variable, value in environment.items():
            value = str(value)
            assert not re.search(r"://[^/\s:@]+:[^@\s]+@", value), f"{name}: {variable} holds a credential"
            if SENSITIVE.search(variable):
                assert variable.endswith("_FILE"), f"{name}: {variable} must come from a secret (<NAME>_FILE)"
        used = {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}
        assert used <= declared, name
        for secret in re.findall(r"/run/secrets/([a-z0-9_]+)", str(service)):
            assert secret in used, f"{name} reads secret {secret} it is not given"
    # Redis requires a password, and the control plane's Redis URL is a secret.
    assert "requirepass" in " ".join(stack["services"]["redis"]["entrypoint"])
    # The runtime's events user: SUBSCRIBE on the events channel only, its password from a secret. Its rules,
    # given to a real Redis, let it subscribe there and nothing else.
    config = " ".join(stack["services"]["redis"]["entrypoint"])
    rules = re.search(r"^\s*user runtime-events (.*)$", config, re.M).group(1)
    secret = ">$$(cat /run/secrets/runtime_events_password)"
    assert secret in rules
    line = rules.replace(secret, ">a-test-password").split()
    redis_conn.execute_command("ACL", "SETUSER", "stack-events-test", *line)
    assert f"&{TENANT_EVENTS_CHANNEL}" in line
    try:
        def allowed(*command: str) -> bool:
            return redis_conn.execute_command("ACL", "DRYRUN", "stack-events-test", *command) in (b"OK", "OK")
        assert allowed("SUBSCRIBE", TENANT_EVENTS_CHANNEL)
        for refused in (("SUBSCRIBE", "rq:other"), ("GET", "rq:queues"), ("PUBLISH", TENANT_EVENTS_CHANNEL, "x")):
            assert not allowed(*refused), refused
    finally:
        redis_conn.execute_command("ACL", "DELUSER", "stack-events-test")
    assert stack["services"]["api"]["environment"]["REDIS_URL_FILE"] == "/run/secrets/redis_url"


def test_every_tenantctl_command_exists(stack):
    for name, service in _ours(stack).items():
        command = service["command"]
        if command[0] != "tenantctl":
            continue
        group = cli
        for word in command[1:]:
            if word.startswith("-"):
                break
            assert word in group.commands, f"{name}: tenantctl has no command {word!r}"
            group = group.commands[word]


def test_gunicorn_config_and_target_are_importable(stack):
    command = stack["services"]["api"]["command"]
    config = command[command.index("-c") + 1].removeprefix("python:")
    conf = importlib.import_module(config)
    assert conf.logger_class == "control_plane.logs.GunicornLogger" and conf.bind.endswith(":8000")
    module, _, attribute = command[-1].partition(":")
    source = (ROOT / Path(*module.split("."))).with_suffix(".py").read_text()
    assert re.search(rf"^{attribute} = create_app\(\)", source, re.M)
    importlib.import_module("control_plane.app")


def test_environment_names_are_settings_and_every_required_one_is_given(stack):
    known = _settings_names() | LIBRARY_VARIABLES
    for name, service in _ours(stack).items():
        for variable in service["environment"]:
            assert variable.removesuffix("_FILE") in known or variable in known, f"{name}: {variable} is not a setting"
        provided = {variable.removesuffix("_FILE") for variable in service["environment"]}
        assert set(REQUIRED) <= provided, f"{name} misses {set(REQUIRED) - provided}"
        assert service["environment"]["LOG_FORMAT"] == "json"


def test_dockerfile_runs_unprivileged_and_owns_what_it_writes():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER controlplane$", dockerfile, re.M) and "--uid 10001" in dockerfile
    assert "PYTHONUNBUFFERED=1" in dockerfile and "LOG_FORMAT=json" in dockerfile
    assert re.search(r"install -d -o controlplane -g controlplane .*/var/lib/control-plane/backups", dockerfile)
    assert "/var/tmp/control-plane" in dockerfile and "TMPDIR=/var/tmp/control-plane" in dockerfile
    assert 'postgresql-client-${PG_MAJOR}' in dockerfile and "ARG PG_MAJOR=15" in dockerfile
    assert "postgres:15" in RAW  # the servers' major version matches the image's client


def test_worker_liveness_check_sees_this_hosts_worker(settings, redis_conn):
    import socket

    from rq import Queue, Worker

    check = [sys.executable, "-m", "control_plane.healthcheck", "worker"]
    env = {**os.environ, "REDIS_URL": settings.redis_url}
    assert subprocess.run(check, env=env, capture_output=True, timeout=60).returncode == 1
    worker = Worker([Queue(settings.queue_name, connection=redis_conn)], connection=redis_conn,
                    name=f"liveness-{os.getpid()}")
    worker.register_birth()
    try:
        assert worker.hostname == socket.gethostname()
        assert subprocess.run(check, env=env, capture_output=True, timeout=60).returncode == 0
    finally:
        worker.register_death()
    unreachable = {**env, "REDIS_URL": "redis://127.0.0.1:1/0"}  # Redis down: not the worker's fault
    assert subprocess.run(check, env=unreachable, capture_output=True, timeout=60).returncode == 0


def test_file_variants_are_read(tmp_path):
    secret = tmp_path / "keyring"
    secret.write_text("k1:c2VjcmV0\n")
    assert read_setting("KEYRING", {"KEYRING_FILE": str(secret)}) == "k1:c2VjcmV0"
    environ = {name: "x" for name in REQUIRED}
    del environ["KEYRING"]
    environ["KEYRING_FILE"] = str(secret)
    assert Settings.from_env(environ).keyring == "k1:c2VjcmV0"


def test_missing_settings_are_named():
    from control_plane.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as error:
        Settings.from_env({"REDIS_URL": "redis://x"})
    for name in ("CATALOG_DATABASE_URL", "TENANT_DB_ADMIN_URL", "BACKUP_STORE_URL", "KEYRING"):
        assert name in str(error.value)
    assert "REDIS_URL" not in str(error.value)


def test_optional_monitoring_stack_joins_the_stack_with_rules_and_dashboard():
    result = subprocess.run(["docker-compose", "-f", str(STACK_FILE), "-f", "deploy/monitoring-stack.yml", "config"],
                            cwd=ROOT, env={**os.environ, "CONTROL_PLANE_TAG": "1.4.2"}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    combined = yaml.safe_load(result.stdout)
    assert {"prometheus", "grafana", "api"} <= set(combined["services"])
    raw = yaml.safe_load((ROOT / "deploy" / "monitoring-stack.yml").read_text())
    for name, config in raw["configs"].items():
        assert (ROOT / config["file"]).is_file(), f"config {name}: {config['file']} is missing"
    targets = {c["source"]: c["target"] for c in raw["services"]["prometheus"]["configs"]}
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == [targets["prometheus_alerts"]]
    assert prometheus["scrape_configs"][0]["job_name"] == "control-plane"  # the job ApiDown watches
    assert raw["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"].startswith("/run/secrets/")
