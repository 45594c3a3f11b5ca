"""Metrics, alert rules, dashboard, request ids and the queue view; what an operator sees of a stale backup."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue, Worker

from backup_support import active_tenant, back_up, backup_cleanup, tid  # noqa: F401
from control_plane import metrics
from control_plane.app import create_app
from control_plane.catalog.models import TokenRole
from control_plane.logs import ContextFilter, JsonLineFormatter
from control_plane.services.auth import create_token
from helpers import create_tenant, one

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "control-plane.json"
STALE = tid("stale")
FRESH = tid("fresh")
WATCHED = tid("watched")
SECRETIVE = tid("secretive")


def _promtool() -> str:
    found = shutil.which("promtool") or str(ROOT / ".devstack" / "tools" / "bin" / "promtool")
    assert Path(found).exists(), "promtool is missing: ./scripts/test installs it"
    return found


def _samples(text: str) -> dict[str, list]:
    """Sample name → samples, from a /metrics answer (parsed by prometheus_client's own parser)."""
    found: dict[str, list] = {}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                "gaugehistogram": ("_bucket", "_gcount", "_gsum")}
    for family in text_string_to_metric_families(text):
        # A family without samples yet still declares the series names it will have.
        for name in (family.name, *(family.name + suffix for suffix in suffixes.get(family.type, ()))):
            found.setdefault(name, [])
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def _metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\b(control_plane_[a-z0-9_]+)\b", expression))


def test_alert_rules_pass_their_promtool_tests():
    result = subprocess.run([_promtool(), "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    tests = (PROMETHEUS / "alerts_test.yml").read_text()
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert f"alertname: {rule['alert']}\n" in tests, f"{rule['alert']} has no promtool test"


def test_rules_and_dashboard_use_only_exported_metrics(client, auth):
    create_tenant(client, auth, WATCHED)
    client.get("/v1/tenants", headers=auth)
    exported = set(_samples(client.get("/metrics").get_data(as_text=True)))
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    used = {name for group in rules["groups"] for rule in group["rules"] for name in _metric_names(rule["expr"])}
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert queries, "the dashboard has no queries"
    for query in queries:
        used |= _metric_names(query)
    assert used - exported == set(), f"not exported by /metrics: {sorted(used - exported)}"


def test_metrics_report_http_queue_servers_and_tenants(client, auth, ctx, settings, redis_conn, run_jobs,
                                                       monkeypatch):
    monkeypatch.setattr(metrics, "SERVER_USAGE_TTL", 0)  # servers are asked at every scrape, not from a cache
    active_tenant(client, auth, run_jobs, WATCHED)
    client.get("/v1/tenants/no-such-tenant", headers=auth)
    # A worker alive on our queue, as a running `tenantctl worker` registers itself.
    worker = Worker([Queue(settings.queue_name, connection=redis_conn)], connection=redis_conn,
                    name=f"observed-{STALE}")
    worker.register_birth()
    try:
        samples = _samples(client.get("/metrics").get_data(as_text=True))
    finally:
        worker.register_death()

    def value(name: str, **labels) -> float:
        matching = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(matching) == 1, (name, labels, samples.get(name))
        return matching[0]

    assert value("control_plane_http_requests_total", method="GET", route="/v1/tenants/<tenant_id>",
                 status="404") >= 1
    assert value("control_plane_http_request_duration_seconds_count", method="GET",
                 route="/v1/tenants/<tenant_id>") >= 1
    assert value("control_plane_workers") >= 1
    assert value("control_plane_queue_jobs", queue=settings.queue_name, state="queued") == 0
    assert value("control_plane_server_up", server="default") == 1
    assert value("control_plane_server_tenants", server="default") == 1
    assert 0 < value("control_plane_server_connections", server="default") <= value(
        "control_plane_server_max_connections", server="default")
    database_size = one(settings.tenant_db_admin_url, "SELECT pg_database_size(datname) FROM pg_database "
                        "WHERE datname = %s", f"tenant_{WATCHED.replace('-', '_')}_db")
    assert database_size * 0.9 < value("control_plane_tenant_database_size_bytes", tenant_id=WATCHED) < database_size * 1.1
    assert value("control_plane_operations_finished_last_hour", kind="provision", status="succeeded") == 1
    assert value("control_plane_operation_duration_seconds_bucket", kind="provision", le="+Inf") == 1
    sources = {s.labels["source"]: s.value for s in samples["control_plane_metrics_source_up"]}
    assert {"catalog", "backups", "drills", "queue", "servers"} <= set(sources) and set(sources.values()) == {1}, sources
    # No drill yet: the age of the newest passing one counts from the tenant's creation.
    assert 0 <= value("control_plane_tenant_successful_drill_age_seconds", tenant_id=WATCHED) < 3600


def test_metrics_token_protects_metrics(ctx):
    guarded = create_app(ctx=replace(ctx, settings=replace(ctx.settings, metrics_token="scrape-secret")))
    client = guarded.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    answer = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert answer.status_code == 200 and b"control_plane_tenants" in answer.data


def test_request_id_is_echoed_or_generated(client, auth):
    echoed = client.get("/v1/tenants", headers={**auth, "X-Request-ID": "req-42.a:b"})
    assert echoed.headers["X-Request-ID"] == "req-42.a:b"
    generated = client.get("/healthz", headers={"X-Request-ID": "not acceptable\u00e9 " * 20})
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["X-Request-ID"])
    refused = client.get("/v1/tenants")  # a 401 has its id too
    assert refused.status_code == 401 and re.fullmatch(r"[0-9a-f]{32}", refused.headers["X-Request-ID"])


def test_queue_view_is_for_super_admins(client, auth, ctx, settings, redis_conn, run_jobs):
    create_tenant(client, auth, WATCHED)  # one queued job
    worker = Worker([Queue(settings.queue_name, connection=redis_conn)], connection=redis_conn,
                    name=f"listed-{STALE}")
    worker.register_birth()
    try:
        workers = client.get("/v1/workers", headers=auth)
        queues = client.get("/v1/queues", headers=auth).get_json()
    finally:
        worker.register_death()
    assert workers.status_code == 200
    assert [w["queues"] for w in workers.get_json() if w["name"] == f"listed-{STALE}"] == [[settings.queue_name]]
    ours = [q for q in queues["queues"] if q["name"] == settings.queue_name]
    assert ours[0]["jobs"]["queued"] == 1 and ours[0]["oldest_queued_age_seconds"] >= 0
    assert isinstance(queues["schedulers"], list)
    tenant_token = create_token(ctx, TokenRole.TENANT_ADMIN, "tenant", WATCHED)[1]
    assert client.get("/v1/queues", headers={"Authorization": f"Bearer {tenant_token}"}).status_code == 403
    assert client.get("/v1/workers").status_code == 401
    run_jobs()


def test_a_stale_backup_shows_as_metric_alert_and_log_line(client, auth, ctx, settings, run_jobs, tmp_path):
    """What an operator sees when a tenant's backup goes stale: metric, alert (promtool), log line."""
    for tenant_id in (STALE, FRESH):
        active_tenant(client, auth, run_jobs, tenant_id)
        back_up(client, auth, run_jobs, tenant_id)
    # The stale tenant's newest backup is made 27 hours old, as if a day of scheduled backups failed.
    one(settings.catalog_database_url, "UPDATE backups SET completed_at = completed_at - interval '27 hours' "
        "WHERE tenant_id = %s RETURNING id", STALE)
    one(settings.catalog_database_url, "UPDATE tenants SET last_backup_at = last_backup_at - interval '27 hours' "
        "WHERE id = %s RETURNING id", STALE)

    text = client.get("/metrics").get_data(as_text=True)
    lines = [line for line in text.splitlines() if line.startswith("control_plane_tenant_") and (
        STALE in line or FRESH in line) and "backup" in line]
    print("\n/metrics:\n" + "\n".join(lines))
    samples = _samples(text)
    age = {s.labels["tenant_id"]: s.value for s in samples["control_plane_tenant_last_backup_age_seconds"]}
    rpo = {s.labels["tenant_id"]: s.value for s in samples["control_plane_tenant_backup_rpo_seconds"]}
    assert age[STALE] > 27 * 3600 > rpo[STALE] and age[FRESH] < 3600 < rpo[FRESH]

    # The scraped values, fed to Prometheus' own rule engine: TenantBackupStale fires for STALE only.
    series = [{"series": f'{name}{{job="control-plane",instance="api-1",tenant_id="{tenant}"}}',
               "values": f"{values[tenant]:.0f}+60x20"}
              for name, values in (("control_plane_tenant_last_backup_age_seconds", age),
                                   ("control_plane_tenant_backup_rpo_seconds", rpo)) for tenant in (STALE, FRESH)]
    for item in series:
        if "rpo" in item["series"]:
            item["values"] = item["values"].replace("+60x20", "x20")
    scraped = {"rule_files": [str(PROMETHEUS / "alerts.yml")], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "promql_expr_test": [{"expr": "ALERTS{alertname=\"TenantBackupStale\",alertstate=\"firing\"}",
                              "eval_time": "11m",
                              "exp_samples": [{"labels": f'ALERTS{{alertname="TenantBackupStale",'
                                                         f'alertstate="firing",job="control-plane",'
                                                         f'severity="critical",tenant_id="{STALE}"}}',
                                               "value": 1}]}]}]}
    (tmp_path / "scraped_test.yml").write_text(yaml.safe_dump(scraped))
    result = subprocess.run([_promtool(), "test", "rules", "scraped_test.yml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    print(f"promtool: {result.stdout.strip()} ALERTS{{alertname=\"TenantBackupStale\",alertstate=\"firing\","
          f"tenant_id=\"{STALE}\",severity=\"critical\"}} at 11m")
    assert result.returncode == 0, result.stdout + result.stderr

    # The scheduler process (here its one-shot form) logs it, as JSON like in the containers.
    import os

    run = subprocess.run([sys.executable, "-m", "control_plane.cli", "scheduler", "--once"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "LOG_FORMAT": "json"})
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["stale_backups"] == [STALE]
    warnings = [json.loads(line) for line in run.stderr.splitlines()
                if line.startswith("{") and "past its RPO" in line]
    print("log: " + "\n".join(json.dumps(w) for w in warnings))
    assert [(w["level"], w["logger"], w["tenant_id"]) for w in warnings] == [
        ("WARNING", "control_plane.services.backup_schedule", STALE)]


def test_debug_logs_of_provision_backup_restore_hold_ids_and_no_secret(client, ctx, settings, run_jobs, tmp_path):
    """Everything logged at DEBUG (this process and the forked work horses) while a tenant is provisioned,
    backed up and restored: JSON lines with the ids, and none of the secrets the test knows."""
    import logging

    from sqlalchemy import make_url

    from control_plane.catalog.models import Tenant
    from control_plane.services.context import role_secret_context
    from helpers import operation

    log_file = tmp_path / "all.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(JsonLineFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    token = create_token(ctx, TokenRole.SUPER_ADMIN, "log-audit")[1]
    auth = {"Authorization": f"Bearer {token}", "X-Request-ID": "audit-request-1"}
    admin_password = "Clinic-Admin-Passw0rd-9f3c"
    try:
        created = client.post("/v1/tenants", headers=auth, json={
            "id": SECRETIVE, "name": "Secretive clinic", "admin_email": "owner@secretive.example",
            "admin_password": admin_password})
        assert created.status_code == 202, created.get_json()
        run_jobs()
        backup = back_up(client, auth, run_jobs, SECRETIVE)
        restored = client.post(f"/v1/tenants/{SECRETIVE}/restore", headers=auth,
                               json={"backup_id": backup["id"], "mode": "in_place"})
        assert restored.status_code == 202, restored.get_json()
        run_jobs()
        assert operation(client, auth, restored.get_json()["id"])["status"] == "succeeded"
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()

    with ctx.sessions() as session:
        row = session.get(Tenant, SECRETIVE)
        role_password = ctx.keyring.decrypt(row.role_password_encrypted, role_secret_context(SECRETIVE))
    secrets = {"role password": role_password, "admin password": admin_password, "API token": token,
               "API token secret part": token.split("_", 1)[1],
               "admin URL password": make_url(settings.tenant_db_admin_url).password,
               "catalog URL password": make_url(settings.catalog_database_url).password,
               **{f"keyring key {key_id}": key for key_id, key in
                  (item.split(":", 1) for item in settings.keyring.split(","))}}
    lines = log_file.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) > 20 and all({"timestamp", "level", "logger", "message"} <= set(r) for r in records)
    for name, secret in secrets.items():
        if secret:
            leaks = [line for line in lines if secret in line]
            assert not leaks, f"{name} logged: {leaks[:2]}"
    # The request's lines carry its id and actor; the job's lines the operation and tenant ids.
    assert any(r.get("request_id") == "audit-request-1" and r.get("actor") == "token:log-audit" for r in records)
    restore_id = restored.get_json()["id"]
    assert any(r.get("operation_id") == restore_id and r.get("tenant_id") == SECRETIVE
               and r["logger"].startswith("control_plane.services") for r in records)


def test_gunicorn_logs_access_and_errors_as_json_with_the_request_id(settings, tmp_path):
    """The API container's command, for real: gunicorn with our config, one request, its JSON log lines."""
    import os
    import socket
    import time

    import requests

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log_path = tmp_path / "gunicorn.log"
    env = {**os.environ, "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}
    with log_path.open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "python:control_plane.gunicorn_conf",
                                   "-b", f"127.0.0.1:{port}", "control_plane.wsgi:app"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    answer = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10,
                                          headers={"X-Request-ID": "gunicorn-check-1"})
                    break
                except (requests.ConnectionError, requests.Timeout):
                    assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()
                    time.sleep(0.2)
            assert answer.status_code == 200 and answer.headers["X-Request-ID"] == "gunicorn-check-1"
        finally:
            server.terminate()
            server.wait(timeout=60)
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    access = [r for r in records if r["logger"] == "gunicorn.access"]
    assert [(r["request_id"], r["path"], r["status"]) for r in access] == [("gunicorn-check-1", "/healthz", "200")]
    assert any(r["logger"] == "gunicorn.error" and "Booting worker" in r["message"] for r in records)
    assert all(not line or line.startswith("{") for line in log_path.read_text().splitlines()), "a non-JSON line"


def test_credentials_in_urls_are_redacted_from_messages_and_tracebacks():
    import io
    import logging

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLineFormatter())
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("tests.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("cannot reach %s", "postgresql://tenant_admin:pa/ss@db:5432/postgres")
        try:
            raise RuntimeError("redis://:hunter2@redis:6379/0 refused")
        except RuntimeError:
            logger.exception("enqueue failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "pa/ss" not in text and "hunter2" not in text
    assert "postgresql://tenant_admin:***@db:5432/postgres" in text and "redis://:***@redis:6379/0" in text
