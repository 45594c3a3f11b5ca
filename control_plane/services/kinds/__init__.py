"""Kinds of operations: one module per kind, each holding one `Kind` object (see `base.Kind`).

A kind declares, in its module, the tenant statuses it may start from, the status the tenant shows
while it runs (or none: a backup keeps the tenant serving), how it prepares its request, runs, fails,
is retried and undoes a cancelled run. Everything else (idempotent requests, the tenant's work slot,
locking, audit, publishing, dispatch, failure, retry, cancel, the sweeper) is shared and lives in
`services/operation_requests.py`, `services/runner.py` and `services/operations.py`.

To add a kind (say `drill`):
1. a value in `catalog.models.OperationKind` (`DRILL = "drill"`); no catalog migration is needed;
2. a module `services/kinds/drill.py` with a `Kind` subclass and its instance, e.g.::

       class Drill(Kind):
           kind = OperationKind.DRILL
           action = "drill"                        # "tenant 'x' is deleted: cannot drill" (409)
           starts_from = frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED})
           busy_status = None                      # the tenant's status while it runs; None: unchanged
           failed_event = "drill.failed"           # the audit action of a failure
           repeatable = True                       # the sweeper may retry it after its worker died
           def run(self, ctx, session, op, tenant, report): ...   # report(step, %) at each step boundary
           def undo(self, ctx, session, op, tenant): ...          # after a failure, a dead worker, a cancel

       DRILL = Drill()

       def request_drill(ctx, principal, tenant_id, *, idempotency_key=None) -> Operation:
           principal.require_tenant(tenant_id)
           return request_work(ctx, principal, DRILL, tenant_id, {}, idempotency_key)

   `request_work` (services/operation_requests.py) does the rest: Idempotency-Key replay, the tenant's
   work slot (423), the transition (409), the operation row, audit, commit, publish, enqueue;
3. one line in `services/kinds/registry.py`: add `drill.DRILL` to `KINDS`.

Optional hooks on `Kind`: `prepare` (load or create the tenant, refuse early), `starts`/`holds` (per
mode), `status_after_failure`/`status_after_cancel`, `retry_from`, `shown_result`, `conflict`.

This package's `__init__` imports nothing, so kind modules never form an import cycle through it.
"""
