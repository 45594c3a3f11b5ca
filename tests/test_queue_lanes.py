"""Fair share of the workers: who asked for an operation decides its queue (naming.Lane), and every worker
takes work from the lanes in priority order, so a flood of one kind of work cannot starve the others."""
from __future__ import annotations

from datetime import timedelta

from rq import Queue
from rq.job import Job

from control_plane.catalog.backup_models import BackupTrigger
from control_plane.catalog.models import Operation, TokenRole, utcnow
from control_plane.jobs.worker import build_worker
from control_plane.naming import job_id, queue_names
from control_plane.services.auth import SCHEDULER, create_token
from control_plane.services.kinds.backup import request_backup
from control_plane.services.sweeper import LOST_AFTER, redispatch_lost
from helpers import catalog_tenant

FLOOD = ("lane-bulk-1", "lane-bulk-2", "lane-bulk-3")


def _next_operations(settings, redis_conn) -> list[str]:
    """The operations the project's worker would run next, in order: RQ's own dequeue over the worker's
    queues, as `Worker.work()` does it (the jobs are taken off the queues, not run)."""
    queues = build_worker(settings).queues
    order = []
    while (found := Queue.dequeue_any(queues, None, connection=redis_conn)) is not None:
        order.append(found[0].args[0])
    return order


def test_people_go_before_the_scheduled_flood_and_one_tenant_cannot_crowd_another(client, auth, ctx, settings,
                                                                                    redis_conn):
    for tenant_id in ("lane-a", "lane-b", "lane-c", *FLOOD):
        catalog_tenant(ctx, tenant_id)
    flood = [request_backup(ctx, SCHEDULER, tenant_id, trigger=BackupTrigger.SCHEDULED).id for tenant_id in FLOOD]

    def tenant_admin(tenant_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {create_token(ctx, TokenRole.TENANT_ADMIN, tenant_id, tenant_id)[1]}"}

    # Tenant a's admin floods: one backup queued, the others refused while it waits (one operation per tenant).
    a_admin = tenant_admin("lane-a")
    answers = [client.post("/v1/tenants/lane-a/backups", json={}, headers=a_admin) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [202, 423, 423]
    a_op = answers[0].get_json()["id"]
    b_op = client.post("/v1/tenants/lane-b/backups", json={}, headers=tenant_admin("lane-b")).get_json()["id"]
    c_op = client.post("/v1/tenants/lane-c/backups", json={}, headers=auth).get_json()["id"]

    expected = [c_op, a_op, b_op, *flood]
    # The super admin's first; tenant b behind at most tenant a's one backup; the scheduler's flood last.
    assert _next_operations(settings, redis_conn) == expected

    # Dispatched again after the jobs were lost (Redis restarted empty), each goes back to its lane.
    for op_id in expected:
        Job.fetch(job_id(op_id), connection=redis_conn).delete()
    lost_since = utcnow() - LOST_AFTER - timedelta(seconds=10)
    with ctx.sessions() as session, session.begin():
        for position, op_id in enumerate(expected):  # in the order they were asked for
            session.get(Operation, op_id).created_at = lost_since + timedelta(milliseconds=position)
    assert sorted(redispatch_lost(ctx)) == sorted(expected)
    assert _next_operations(settings, redis_conn) == expected
    assert [Queue(name, connection=redis_conn).count for name in queue_names(settings.queue_name)] == [0, 0, 0]
