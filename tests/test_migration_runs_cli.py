"""`tenantctl migrations`: run with live progress and a summary, status, list, cancel, resume, dry run, drift."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from control_plane.cli import cli
from migration_fleet import FIRST, HEAD, Fleet, database_revision, get_run, put_at_revision, running_workers, set_read_only
from migration_fleet import clean_world  # noqa: F401 (fixture: replaces conftest's teardown here)


@pytest.fixture(scope="module")
def module_fleet(app, ctx, settings, redis_conn):
    fleet = Fleet.provision(app, ctx, settings, redis_conn, [f"mr-cli-{n}" for n in range(1, 5)])
    yield fleet
    fleet.destroy()


@pytest.fixture
def fleet(module_fleet):
    yield module_fleet.ids
    module_fleet.reset()


def tenantctl(*args: str):
    return CliRunner().invoke(cli, ["migrations", *args], catch_exceptions=False)


def test_run_follow_shows_progress_then_a_summary(admin_url, fleet):
    set_read_only(admin_url, fleet[3], True)
    with running_workers(2):
        result = tenantctl("run", "--target", "head", "--concurrency", "2", "--canary", "1", "--max-failures", "2",
                           "--follow", *[arg for t in fleet for arg in ("--tenant", t)])
    assert result.exit_code == 1  # one tenant failed
    assert "[" in result.stderr and "ok 3" in result.stderr and "/s" in result.stderr and "ETA" in result.stderr
    out = result.stdout
    assert "failed in" in out and "4 tenants to " + HEAD in out
    assert "succeeded        3" in out and "failed           1" in out
    assert fleet[3] in out and "read-only transaction" in out
    assert [database_revision(admin_url, t) for t in fleet] == [HEAD, HEAD, HEAD, FIRST]


def test_run_status_cancel_resume_and_list(client, auth, admin_url, run_jobs, fleet):
    started = tenantctl("run", "--no-follow", "--concurrency", "1", *[arg for t in fleet for arg in ("--tenant", t)])
    assert started.exit_code == 0
    run_id = started.stdout.strip().splitlines()[-1]
    cancelled = tenantctl("cancel", run_id)
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.stdout
    run_jobs()
    status = tenantctl("status", run_id)
    assert status.exit_code == 0 and "cancelled in" in status.stdout and "pending          4" in status.stdout
    listed = tenantctl("list")
    assert run_id in listed.stdout and "cancelled" in listed.stdout

    assert tenantctl("resume", run_id, "--no-wait").exit_code == 0  # both spellings, as everywhere
    run_jobs()
    final = tenantctl("status", run_id, "--items", "all")
    assert "succeeded in" in final.stdout and all(t in final.stdout for t in fleet)
    assert '"status": "succeeded"' in tenantctl("status", run_id, "--json").stdout
    assert get_run(client, auth, run_id)["status"] == "succeeded"


def test_dry_run_prints_the_sql(admin_url, fleet):
    result = tenantctl("run", "--dry-run")
    assert result.exit_code == 0
    assert f"-- from {FIRST} to {HEAD}: 4 tenant(s)" in result.stdout and "CREATE TABLE appointments" in result.stdout
    assert all(database_revision(admin_url, t) == FIRST for t in fleet)


def test_drift_check_exits_1_when_tenants_drifted(ctx, fleet):
    result = tenantctl("drift", "--check")
    assert result.exit_code == 1
    assert f"head {HEAD}: 0 of 4 tenants in sync" in result.stdout and "not_at_head" in result.stdout
    put_at_revision(ctx, fleet, HEAD)
    clean = tenantctl("drift", "--check")
    assert clean.exit_code == 0 and "4 of 4 tenants in sync" in clean.stdout


def test_waves_with_a_gate_then_a_pause_cancel_and_rollback(admin_url, ctx, run_jobs, fleet):
    tenants = [arg for t in fleet for arg in ("--tenant", t)]
    with running_workers(2):
        result = tenantctl("run", "--waves", "50,100", "--concurrency", "2", "--follow", "--check",
                           "select count(*) from leads where full_name like 'broken%'", *tenants)
    assert result.exit_code == 0, result.output
    assert "wave 1/2 (50%) passed: 2/2 done, ok 2" in result.stderr and "gate passed on 2 tenant(s)" in result.stderr
    assert "wave 2/2 (100%) passed: 2/2 done, ok 2" in result.stderr and "succeeded in" in result.stdout

    put_at_revision(ctx, fleet, FIRST)
    started = tenantctl("run", "--waves", "50,100", "--manual-pause", *tenants)
    run_id = started.stdout.strip().splitlines()[-1]
    run_jobs()
    status = tenantctl("status", run_id)
    assert f"paused for you: tenantctl migrations continue {run_id}" in status.stdout
    assert "wave 2/2 (100%) not started: 2 tenant(s)" in status.stdout
    assert tenantctl("cancel", run_id).exit_code == 0
    rolled = tenantctl("rollback", run_id)
    rollback_id = rolled.stdout.strip().splitlines()[-1]
    assert "2 tenant(s) to bring back" in rolled.stderr
    run_jobs()
    assert f"migration run {rollback_id}: succeeded in" in tenantctl("status", rollback_id).stdout
    assert [database_revision(admin_url, t) for t in fleet] == [FIRST] * 4
