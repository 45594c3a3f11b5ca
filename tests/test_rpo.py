"""Recovery point objective per tenant: staleness, sub-daily schedules, retries of failed scheduled backups."""
from __future__ import annotations

from datetime import datetime, timedelta

from backup_support import backup_cleanup, tid  # noqa: F401
from control_plane.catalog.backup_models import BackupPolicy
from control_plane.catalog.plan_models import Plan
from control_plane.catalog.models import Operation, OperationStatus, Tenant, utcnow
from control_plane.services.backup_schedule import retry_failed_backups, schedule_due_backups
from helpers import catalog_tenant

FRESH = tid("rpo-fresh")
NEVER = tid("rpo-never")
HOURLY = tid("rpo-hourly")
GONE = tid("rpo-gone")


def _tenant(ctx, tenant_id: str, *, created_ago: timedelta, backed_up_ago: timedelta | None = None,
            rpo_hours: int | None = None, plan: str = "standard") -> None:
    """A catalog row only (no database): enough for what the scheduler and the staleness filter decide."""
    catalog_tenant(ctx, tenant_id, created_ago=created_ago, backed_up_ago=backed_up_ago, plan=plan)
    with ctx.sessions() as session:
        if rpo_hours is not None:
            session.add(BackupPolicy(tenant_id=tenant_id, keep_last=7, keep_daily_days=7, scheduled=True,
                                     rpo_hours=rpo_hours))
        session.commit()


def test_backup_stale_lists_tenants_whose_newest_backup_is_older_than_their_rpo(client, auth, ctx):
    _tenant(ctx, FRESH, created_ago=timedelta(days=3), backed_up_ago=timedelta(hours=20))
    _tenant(ctx, NEVER, created_ago=timedelta(days=2))
    _tenant(ctx, HOURLY, created_ago=timedelta(days=3), backed_up_ago=timedelta(hours=2), rpo_hours=1)
    stale = client.get("/v1/tenants?backup_stale=true", headers=auth)
    assert stale.status_code == 200
    assert sorted(t["id"] for t in stale.get_json()) == sorted([NEVER, HOURLY])
    assert [t["id"] for t in client.get("/v1/tenants?backup_stale=false", headers=auth).get_json()] == [FRESH]
    assert client.get("/v1/tenants?backup_stale=maybe", headers=auth).status_code == 422
    policy = client.put(f"/v1/tenants/{HOURLY}/backup-policy", json={"rpo_hours": 0}, headers=auth)
    assert policy.status_code == 422 and "rpo_hours" in policy.get_json()["errors"]["json"]
    policy = client.put(f"/v1/tenants/{HOURLY}/backup-policy", json={"rpo_hours": 3}, headers=auth)
    assert policy.status_code == 200 and policy.get_json()["rpo_hours"] == 3
    assert HOURLY not in {t["id"] for t in client.get("/v1/tenants?backup_stale=true", headers=auth).get_json()}


def _scheduled_slots(ctx, tenant_id: str) -> int:
    """How many backups the scheduler starts for the tenant over a day of ticks every 30 min."""
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    started = []
    for step in range(48):
        started_now = schedule_due_backups(ctx, now=start + timedelta(minutes=30 * step))
        _worker_finishes(ctx, started_now)
        started += started_now
    with ctx.sessions() as session:
        return sum(session.get(Operation, op_id).tenant_id == tenant_id for op_id in started)


def test_the_plans_rpo_schedules_and_judges_a_tenant_unless_its_own_policy_sets_one(client, auth, ctx):
    with ctx.sessions() as session:
        session.add(Plan(name="rpo-premium", backup_rpo_hours=4))
        session.commit()
    _tenant(ctx, HOURLY, created_ago=timedelta(days=3), backed_up_ago=timedelta(hours=6), plan="rpo-premium")
    policy = client.get(f"/v1/tenants/{HOURLY}/backup-policy", headers=auth).get_json()
    assert (policy["rpo_hours"], policy["rpo_source"]) == (4, "plan")
    assert client.get(f"/v1/tenants/{HOURLY}", headers=auth).get_json()["rpo_hours"] == 4  # what the console uses
    assert [t["rpo_hours"] for t in client.get(f"/v1/tenants?q={HOURLY}", headers=auth).get_json()] == [4]
    # The answers of changes show it too (tenantctl prints them), not null.
    assert client.post(f"/v1/tenants/{HOURLY}/suspend", headers=auth).get_json()["rpo_hours"] == 4
    assert client.post(f"/v1/tenants/{HOURLY}/resume", headers=auth).get_json()["rpo_hours"] == 4
    assert client.patch(f"/v1/tenants/{HOURLY}", json={"name": "Hourly"}, headers=auth).get_json()["rpo_hours"] == 4
    # Past the plan's 4 h (the default 24 h would call it fresh): stale, and backed up every 3 h.
    assert HOURLY in {t["id"] for t in client.get("/v1/tenants?backup_stale=true", headers=auth).get_json()}
    assert _scheduled_slots(ctx, HOURLY) in (8, 9)

    # The tenant's own policy wins over its plan; null hands it back to the plan.
    own = client.put(f"/v1/tenants/{HOURLY}/backup-policy", json={"rpo_hours": 12}, headers=auth).get_json()
    assert (own["rpo_hours"], own["rpo_source"]) == (12, "policy")
    assert HOURLY not in {t["id"] for t in client.get("/v1/tenants?backup_stale=true", headers=auth).get_json()}
    back = client.put(f"/v1/tenants/{HOURLY}/backup-policy", json={"rpo_hours": None}, headers=auth).get_json()
    assert (back["rpo_hours"], back["rpo_source"]) == (4, "plan")
    unplanned = client.patch("/v1/plans/rpo-premium", json={"backup_rpo_hours": None}, headers=auth)
    assert unplanned.status_code == 200
    policy = client.get(f"/v1/tenants/{HOURLY}/backup-policy", headers=auth).get_json()
    assert (policy["rpo_hours"], policy["rpo_source"]) == (24, "default")


def _worker_finishes(ctx, operation_ids: list[str]) -> None:
    """What a worker would do with these backups, in the catalog only: each ends and frees its tenant."""
    with ctx.sessions() as session:
        for op in (session.get(Operation, op_id) for op_id in operation_ids):
            op.start()
            op.succeed({})
            session.get(Tenant, op.tenant_id).release_slot(op.id)
        session.commit()


def test_a_short_rpo_is_kept_with_several_backups_a_day(ctx):
    _tenant(ctx, HOURLY, created_ago=timedelta(days=3), rpo_hours=4)
    _tenant(ctx, FRESH, created_ago=timedelta(days=3))
    start = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    started = []
    for step in range(48):  # a tick every 30 min for a day
        started_now = schedule_due_backups(ctx, now=start + timedelta(minutes=30 * step))
        _worker_finishes(ctx, started_now)  # one operation at a time per tenant: each ends before the next tick
        started += started_now
    with ctx.sessions() as session:
        ops = [session.get(Operation, op_id) for op_id in started]
    slots = [datetime.fromisoformat(op.idempotency_key.rsplit(":", 2)[1] + ":" + op.idempotency_key.rsplit(":", 1)[1])
             for op in ops if op.tenant_id == HOURLY]
    # Every 3 h (¾ of the RPO, leaving room for the backup itself): 8 slots in the day, plus the one
    # before the first tick.
    assert len(slots) in (8, 9) and {b - a for a, b in zip(slots, slots[1:])} == {timedelta(hours=3)}
    assert [op.tenant_id for op in ops].count(FRESH) in (1, 2)  # daily: today's slot, and tomorrow's if in range


def test_a_failed_scheduled_backup_is_retried_with_backoff_until_the_next_slot_takes_over(ctx, run_jobs):
    _tenant(ctx, GONE, created_ago=timedelta(days=3))  # its database does not exist: every backup fails
    now = utcnow() + timedelta(days=1)
    [op_id] = schedule_due_backups(ctx, now=now)
    run_jobs()

    def failed() -> Operation:
        with ctx.sessions() as session:
            op = session.get(Operation, op_id)
            assert op.status is OperationStatus.FAILED, op.error
            return op

    first = failed().finished_at
    assert retry_failed_backups(ctx, now=first + timedelta(minutes=1)) == []  # backoff: 2 min
    assert retry_failed_backups(ctx, now=first + timedelta(minutes=3)) == [op_id]
    run_jobs()
    second = failed()
    assert second.attempts == 2
    assert retry_failed_backups(ctx, now=second.finished_at + timedelta(minutes=3)) == []  # then 4 min
    assert retry_failed_backups(ctx, now=second.finished_at + timedelta(minutes=5)) == [op_id]
    run_jobs()
    # The next day's slot starts a new backup; the old one is no longer retried.
    later = schedule_due_backups(ctx, now=now + timedelta(days=1))
    assert len(later) == 1 and later[0] != op_id
    run_jobs()
    assert retry_failed_backups(ctx, now=utcnow() + timedelta(days=3)) == [later[0]]
