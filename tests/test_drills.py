"""Restore drills: pass on a good backup with RPO and RTO recorded, fail with the right reason on a corrupted
object, a wrong row count and a missing object (and pass from the copy when there is one); scheduled weekly;
metrics; the CLI."""
from __future__ import annotations

import logging
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

import pytest
from click.testing import CliRunner
from sqlalchemy.orm.attributes import flag_modified

from backup_support import active_tenant, back_up, backup_cleanup, databases_like, role, tid, write_rows  # noqa: F401
from control_plane.app import create_app
from control_plane.bootstrap import build_context, dispose
from control_plane.catalog.backup_models import Backup
from control_plane.catalog.models import utcnow
from control_plane.cli import cli
from control_plane.services.drill_schedule import schedule_due_drills
from control_plane.services.runner import execute_operation
from helpers import operation

DRILLED = tid("drilled")
COPIED = tid("drill-copy")


def drill(client, auth, run_jobs, tenant_id: str) -> dict:
    response = client.post(f"/v1/tenants/{tenant_id}/drills", headers=auth)
    assert response.status_code == 202, response.get_json()
    run_jobs()
    return drill_record(client, auth, response.get_json()["id"])


def drill_record(client, auth, operation_id: str) -> dict:
    done = operation(client, auth, operation_id)
    [latest] = [d for d in client.get(f"/v1/tenants/{done['tenant_id']}/drills", headers=auth).get_json()
                if d["operation_id"] == done["id"]]
    return {"operation": done, **latest}


def test_drills_pass_on_a_good_backup_and_fail_with_the_reason(client, auth, run_jobs, ctx, settings, admin_url,
                                                               caplog):
    active_tenant(client, auth, run_jobs, DRILLED)
    write_rows(ctx, DRILLED, "known", leads=5)
    backup = back_up(client, auth, run_jobs, DRILLED)

    passed = drill(client, auth, run_jobs, DRILLED)
    assert passed["result"] == "passed" and passed["operation"]["status"] == "succeeded", passed
    assert passed["backup_id"] == backup["id"] and passed["source"] == "primary"
    assert passed["rpo_seconds"] >= 0 and passed["rto_seconds"] > 0
    assert passed["details"]["tables"] == len(backup["manifest"]["tables"])
    assert passed["details"]["rows"] == sum(backup["manifest"]["tables"].values())
    assert databases_like(admin_url, f"{role(DRILLED)}\\_dr\\_%") == set()  # the scratch database is gone
    metrics = client.get("/metrics", headers=auth).get_data(as_text=True)
    assert f'control_plane_tenant_last_drill_success{{tenant_id="{DRILLED}"}} 1.0' in metrics

    # A wrong row count: the catalog's manifest says one lead more than the dump read.
    with ctx.sessions() as session:
        record = session.get(Backup, backup["id"])
        record.manifest["tables"]["public.leads"] += 1
        flag_modified(record, "manifest")
        session.commit()
    # Run in this process (the worker forks), to see how the expected failure is logged: a warning
    # one-liner with its reason, not an error with a traceback.
    caplog.set_level(logging.INFO, logger="control_plane.services.runner")
    started = client.post(f"/v1/tenants/{DRILLED}/drills", headers=auth).get_json()
    execute_operation(ctx, started["id"])
    [logged] = [r for r in caplog.records if r.name == "control_plane.services.runner" and "failed at" in r.getMessage()]
    assert logged.levelno == logging.WARNING and logged.exc_info is None
    assert "the manifest says 6" in logged.getMessage()
    failed = drill_record(client, auth, started["id"])
    assert failed["result"] == "failed" and failed["operation"]["status"] == "failed"
    assert "public.leads has 5 rows, the manifest says 6" in failed["reason"]
    assert databases_like(admin_url, f"{role(DRILLED)}\\_dr\\_%") == set()
    metrics = client.get("/metrics", headers=auth).get_data(as_text=True)
    assert f'control_plane_tenant_last_drill_success{{tenant_id="{DRILLED}"}} 0.0' in metrics

    # A corrupted object (a newer backup, one flipped byte).
    newer = back_up(client, auth, run_jobs, DRILLED)
    stored = Path(urlparse(settings.backup_store_url).path) / DRILLED / newer["id"] / "dump.pgc.zst.aes"
    data = bytearray(stored.read_bytes())
    data[-50] ^= 0x01
    stored.write_bytes(bytes(data))
    corrupted = drill(client, auth, run_jobs, DRILLED)
    assert corrupted["result"] == "failed" and corrupted["backup_id"] == newer["id"]
    assert "failed authentication" in corrupted["reason"]

    # Missing, and no copy to fall back to.
    stored.unlink()
    missing = drill(client, auth, run_jobs, DRILLED)
    assert missing["result"] == "failed" and "does not exist" in missing["reason"]

    listed = client.get("/v1/drills?result=failed", headers=auth).get_json()
    assert {d["id"] for d in listed} == {failed["id"], corrupted["id"], missing["id"]}
    assert client.get("/v1/drills?result=maybe", headers=auth).status_code == 422


@pytest.fixture
def copy_ctx(settings, tmp_path, monkeypatch):
    url = f"file://{tmp_path / 'copies'}"
    monkeypatch.setenv("BACKUP_COPY_STORE_URL", url)
    context = build_context(replace(settings, backup_copy_store_url=url))
    yield context
    dispose(context)


def test_a_drill_falls_back_to_the_copy_and_drills_are_scheduled_weekly(copy_ctx, settings, auth, run_jobs):
    client = create_app(ctx=copy_ctx).test_client()
    active_tenant(client, auth, run_jobs, COPIED)
    backup = back_up(client, auth, run_jobs, COPIED)
    (Path(urlparse(settings.backup_store_url).path) / COPIED / backup["id"] / "dump.pgc.zst.aes").unlink()
    result = drill(client, auth, run_jobs, COPIED)
    assert result["result"] == "passed" and result["source"] == "copy", result
    assert "does not exist" in result["details"]["fallback_reason"]

    later = utcnow() + timedelta(days=8)  # every tenant's weekly slot has passed since it was created
    started = schedule_due_drills(copy_ctx, now=later)
    assert [operation(client, auth, op_id)["tenant_id"] for op_id in started] == [COPIED]
    assert schedule_due_drills(copy_ctx, now=later) == []  # once per slot, whatever the number of ticks
    run_jobs()
    assert len(client.get(f"/v1/tenants/{COPIED}/drills", headers=auth).get_json()) == 2

    cli_run = CliRunner().invoke(cli, ["drills", "run", COPIED])
    assert cli_run.exit_code == 0, cli_run.output
    run_jobs()
    listed = CliRunner().invoke(cli, ["drills", "list", "--tenant", COPIED])
    assert listed.exit_code == 0 and listed.output.count("passed") == 3
