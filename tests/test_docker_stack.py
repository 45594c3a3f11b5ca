"""docker-stack.yml parses, and every command and setting it uses exists in the code."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import yaml

from control_plane.cli import cli
from control_plane.settings import REQUIRED, Settings, read_setting

ROOT = Path(__file__).resolve().parent.parent
STACK = yaml.safe_load((ROOT / "docker-stack.yml").read_text())
OUR_SERVICES = ("migrate", "api", "worker")


def _settings_names() -> set[str]:
    source = (ROOT / "control_plane" / "settings.py").read_text()
    return set(REQUIRED) | set(re.findall(r'read_setting\("([A-Z_]+)"', source))


def test_services_are_complete():
    assert {"api", "worker", "redis", "catalog", "tenant-db-1", "migrate"} <= set(STACK["services"])
    assert STACK["services"]["api"]["deploy"]["replicas"] == 2
    assert STACK["services"]["worker"]["deploy"]["replicas"] == 2
    for name in ("api", "worker", "redis", "catalog", "tenant-db-1"):
        assert "healthcheck" in STACK["services"][name], name


def test_every_tenantctl_command_exists():
    for name in OUR_SERVICES:
        command = STACK["services"][name]["command"]
        if command[0] != "tenantctl":
            continue
        group = cli
        for word in command[1:]:
            if word.startswith("-"):
                break
            assert word in group.commands, f"{name}: tenantctl has no command {word!r}"
            group = group.commands[word]


def test_gunicorn_target_is_importable_app_factory():
    command = STACK["services"]["api"]["command"]
    assert command[0] == "gunicorn"
    module, _, attribute = command[-1].partition(":")
    source = (ROOT / Path(*module.split("."))).with_suffix(".py").read_text()
    assert re.search(rf"^{attribute} = create_app\(\)", source, re.M)
    importlib.import_module("control_plane.app")


def test_environment_names_are_read_by_settings_and_secrets_exist():
    known = _settings_names()
    declared_secrets = set(STACK["secrets"])
    for name in OUR_SERVICES:
        service = STACK["services"][name]
        for variable, value in service["environment"].items():
            base = variable.removesuffix("_FILE")
            assert base in known, f"{name}: {variable} is not a setting"
            if variable.endswith("_FILE"):
                secret = value.removeprefix("/run/secrets/")
                assert secret in service["secrets"] and secret in declared_secrets
        # Every required setting is provided, directly or as a secret file.
        provided = {variable.removesuffix("_FILE") for variable in service["environment"]}
        assert set(REQUIRED) <= provided, f"{name} misses {set(REQUIRED) - provided}"


def test_file_variants_are_read(tmp_path):
    secret = tmp_path / "keyring"
    secret.write_text("k1:c2VjcmV0\n")
    assert read_setting("KEYRING", {"KEYRING_FILE": str(secret)}) == "k1:c2VjcmV0"
    environ = {name: "x" for name in REQUIRED}
    del environ["KEYRING"]
    environ["KEYRING_FILE"] = str(secret)
    assert Settings.from_env(environ).keyring == "k1:c2VjcmV0"


def test_missing_settings_are_named():
    import pytest

    from control_plane.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as error:
        Settings.from_env({"REDIS_URL": "redis://x"})
    for name in ("CATALOG_DATABASE_URL", "TENANT_DB_ADMIN_URL", "BACKUP_STORE_URL", "KEYRING"):
        assert name in str(error.value)
    assert "REDIS_URL" not in str(error.value)
