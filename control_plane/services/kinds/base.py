"""`Kind`: what a kind of operation declares: where it may start, what it holds while it runs, how it
prepares, runs, fails, is retried and undoes a cancelled or broken run."""
from __future__ import annotations

from typing import Any, ClassVar, Protocol

from sqlalchemy.orm import Session

from control_plane.catalog.models import Operation, OperationKind, Tenant, TenantStatus
from control_plane.errors import TenantNotFoundError
from control_plane.services.auth import Principal
from control_plane.services.context import ServiceContext


class Report(Protocol):
    def __call__(self, step: str, progress: int, *, cancellable: bool = True) -> None:
        """Record progress at a step boundary. Raises `OperationCancelledError` there if a cancel was
        requested, unless `cancellable` is false: from the first such step on, the run goes to its end."""


class Kind:
    kind: ClassVar[OperationKind]
    action: ClassVar[str]                          # the verb in a refusal: "tenant 'x' is deleted: cannot <action>"
    starts_from: ClassVar[frozenset[TenantStatus]]  # the statuses a request may start from (else 409)
    busy_status: ClassVar[TenantStatus | None] = None  # the tenant's status while it runs; None: unchanged
    failed_status: ClassVar[TenantStatus | None] = None  # where a failure leaves the tenant; None: where it was
    # Safe to start over after its worker died mid-run: the sweeper then retries it by itself (bounded).
    repeatable: ClassVar[bool] = False
    failed_event: ClassVar[str]                    # the audit action recorded when it fails

    # -- request -----------------------------------------------------------------------------------------
    def prepare(self, ctx: ServiceContext, session: Session, principal: Principal, tenant_id: str,
                params: dict[str, Any]) -> Tenant:
        """Inside the request's transaction: the tenant the work is for, locked (or created, for kinds that
        create their tenant). Refuse here what the catalog says cannot be done (404, 409)."""
        tenant = session.get(Tenant, tenant_id, with_for_update=True)
        if tenant is None:
            raise TenantNotFoundError(tenant_id)
        return tenant

    def shown_result(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """What the operation's `result` shows while it is queued or running (None: nothing)."""
        return None

    def conflict(self, exc: Exception, tenant_id: str, params: dict[str, Any]) -> Exception:
        """The error to answer when the request's transaction hit a unique constraint (a concurrent twin)."""
        return exc

    # -- run ---------------------------------------------------------------------------------------------
    def run(self, ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant,
            report: Report) -> dict[str, Any] | None:
        """Do the work, each step idempotent (a retry after a crash at any point converges). Runs under the
        tenant's advisory lock; settles the tenant's status itself on success."""
        raise NotImplementedError

    def undo(self, ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant) -> None:
        """After a failure, a dead worker or a cancel: remove what the unfinished run left (scratch databases,
        partial objects). Idempotent; an error is logged and left to a retry. The caller commits."""

    def starts(self, params: dict[str, Any]) -> frozenset[TenantStatus]:
        """The statuses a request with these params may start from (a kind with modes may differ per mode)."""
        return self.starts_from

    def holds(self, params: dict[str, Any]) -> TenantStatus | None:
        """The tenant's status while an operation with these params runs; None: unchanged."""
        return self.busy_status

    def after(self, ctx: ServiceContext, op: Operation) -> None:
        """Once the operation has ended (succeeded, failed or cancelled) and that is committed."""

    # -- where the tenant ends ----------------------------------------------------------------------------
    def status_after_failure(self, op: Operation) -> TenantStatus | None:
        return self.failed_status or op.return_status

    def status_after_cancel(self, op: Operation) -> TenantStatus | None:
        return op.return_status

    def retry_from(self, op: Operation) -> frozenset[TenantStatus]:
        """The tenant statuses a retry of a failed operation may start from."""
        return frozenset({self.failed_status}) if self.failed_status is not None else self.starts_from
