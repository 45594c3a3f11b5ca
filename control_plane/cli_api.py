"""`tenantctl` through the HTTP API: with TENANTCTL_API_URL and TENANTCTL_TOKEN set, every command the API
serves is an HTTP request (no catalog access, no KEYRING on the operator's machine).

Each command is one `Endpoint` (method, path, which parameters go to the path, the query or the body,
which columns a table shows): adding a command for a new endpoint is one entry in ENDPOINTS. Exit
codes: 0 ok, 1 the operation failed (or the API refused for another reason), 2 usage or invalid input,
3 not found, 4 conflict or busy.
"""
from __future__ import annotations

import json
import os
import re
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
import requests
from control_plane.cli_output import (EXIT_BY_STATUS, EXIT_FAILED, EXIT_USAGE, OPERATION_COLUMNS, POLL_SECONDS,
                                     CommandError, follow_all, follow_bar, print_data)
from control_plane.cli_waves import WaveAnnouncer, ended, run_line, waves_body
TIMEOUT_SECONDS = 30


class ApiCommandError(CommandError):
    """An answer that is not a success, or a failed operation."""


class ApiClient:
    """The API at `url` with a bearer `token`; TLS certificates are verified (requests' default)."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/json"})

    @classmethod
    def from_env(cls) -> ApiClient:
        url, token = os.environ.get("TENANTCTL_API_URL"), os.environ.get("TENANTCTL_TOKEN")
        if not url or not token:
            raise ApiCommandError("set TENANTCTL_API_URL and TENANTCTL_TOKEN", EXIT_USAGE)
        return cls(url, token)

    def call(self, method: str, path: str, *, params: dict[str, Any] | None = None,
             body: dict[str, Any] | None = None, idempotency_key: str | None = None) -> tuple[Any, requests.Response]:
        """One request. With an `idempotency_key` (work-starting POSTs), a connection error or a timeout is
        retried once with the same key: if the first request did reach the API, the retry answers the work
        it started instead of starting it twice."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        for attempt in range(2 if idempotency_key else 1):
            try:
                response = self.session.request(method, self.url + path, params=params, json=body,
                                                headers=headers, timeout=TIMEOUT_SECONDS)
                break
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt == 0 and idempotency_key:
                    click.echo(f"no answer from {self.url} ({type(exc).__name__}); trying again with the same "
                               f"Idempotency-Key {idempotency_key}", err=True)
                    continue
                raise ApiCommandError(f"cannot reach {self.url}: {type(exc).__name__}") from None
            except requests.RequestException as exc:
                raise ApiCommandError(f"cannot reach {self.url}: {type(exc).__name__}") from None
        data = response.json() if response.content and "json" in response.headers.get("Content-Type", "") else None
        if response.status_code >= 400:
            problem = data if isinstance(data, dict) else {}
            detail = problem.get("detail") or problem.get("title") or response.reason
            if problem.get("errors") and not problem.get("detail"):  # the API's detail already names the fields
                detail = f"{detail}: {json.dumps(problem['errors'])}"
            raise ApiCommandError(f"{response.status_code} {detail}",
                                  EXIT_BY_STATUS.get(response.status_code, EXIT_FAILED))
        return data, response


@dataclass(frozen=True)
class Endpoint:
    """One command: `tenantctl <group> <name>` is `<method> <path>`.

    `path` names its parameters as `{name}`; `query` and `body` list the parameters sent there, as
    `key` or `key=parameter` when the API's name differs; `columns` are a list's table columns.
    `starts_work`: the answer is an operation, followed to its end unless --no-wait.
    """

    name: str
    method: str
    path: str
    help: str
    examples: tuple[str, ...]
    params: tuple[click.Parameter, ...] = ()
    query: tuple[str, ...] = ()
    body: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    starts_work: bool = False
    confirm: str | None = None
    # Body fields computed from the options (a mode implied by another option, a flag inverted).
    derived: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # (parameter, path): this path instead when that parameter is given (a list narrowed to one tenant).
    narrowed: tuple[str, str] | None = None
    # The answer is a migration run: --follow shows its progress and each wave's until it ends.
    follows_run: bool = False

    @property
    def idempotent(self) -> bool:
        """It starts or restarts work: sent with an Idempotency-Key (the API honours it on those)."""
        return self.method != "GET" and (self.starts_work or self.follows_run)


def _arg(name: str) -> click.Argument:
    return click.Argument([name])


def _opt(*decls: str, **attrs: Any) -> click.Option:
    return click.Option(list(decls), **attrs)


TENANT = _arg("tenant_id")

TENANT_COLUMNS = ("id", "name", "status", "server", "schema_revision", "last_backup_at")
DRILL_COLUMNS = ("id", "tenant_id", "result", "finished_at", "rpo_seconds", "rto_seconds", "reason")
BACKUP_COLUMNS = ("id", "status", "trigger", "completed_at", "stored_bytes", "schema_revision")
STATUS = _opt("--status", help="Only in this status.")
MAX_PAGE_SIZE = 100  # the API's largest page
LIMIT = _opt("--limit", "page_size", type=click.IntRange(1), default=100, show_default=True,
             help="At most this many rows (fetched page by page; stderr says when there are more).")

PLAN_FIELDS = ("description", "connection_limit", "statement_timeout_ms", "idle_in_transaction_timeout_ms",
               "storage_quota_bytes", "backup_rpo_hours")
PLAN_LIMITS = tuple(_opt(f"--{name.replace('_', '-')}", name, type=str if name == "description" else int)
                    for name in PLAN_FIELDS)

# Group name -> (help, its commands); the group "" holds top-level commands.
ENDPOINTS: dict[str, tuple[str, tuple[Endpoint, ...]]] = {
    "tenants": ("Tenants and their lifecycle.", (
        Endpoint("create", "POST", "/v1/tenants", "Create a tenant and provision its database.",
                 ("tenantctl tenants create acme-clinic --name 'Acme Clinic' --admin-email owner@acme.example",),
                 (TENANT, _opt("--name", required=True), _opt("--admin-email", required=True),
                  _opt("--domain", "domains", multiple=True, help="A domain (repeat for several)."),
                  _opt("--plan", help="The tenant's plan.")),
                 body=("id=tenant_id", "name", "admin_email", "domains", "plan"), starts_work=True),
        Endpoint("list", "GET", "/v1/tenants", "List tenants (filters combine).",
                 ("tenantctl tenants list --status active", "tenantctl tenants list -q acme --json"),
                 (STATUS, _opt("--server"), _opt("-q", "query", help="Search id, name and domains."),
                  _opt("--backup-stale", is_flag=True, default=None, help="Only tenants past their RPO."), LIMIT),
                 query=("status", "server", "q=query", "backup_stale", "page_size"), columns=TENANT_COLUMNS),
        Endpoint("show", "GET", "/v1/tenants/{tenant_id}", "One tenant.", ("tenantctl tenants show acme-clinic",),
                 (TENANT,)),
        Endpoint("update", "PATCH", "/v1/tenants/{tenant_id}", "Change a tenant's name, domains or plan.",
                 ("tenantctl tenants update acme-clinic --name 'Acme Clinic Ltd'",),
                 (TENANT, _opt("--name"), _opt("--domain", "domains", multiple=True, default=None),
                  _opt("--plan")), body=("name", "domains", "plan")),
        Endpoint("suspend", "POST", "/v1/tenants/{tenant_id}/suspend", "Suspend: runtimes refuse its requests.",
                 ("tenantctl tenants suspend acme-clinic",), (TENANT,)),
        Endpoint("resume", "POST", "/v1/tenants/{tenant_id}/resume", "Resume a suspended tenant.",
                 ("tenantctl tenants resume acme-clinic",), (TENANT,)),
        Endpoint("migrate", "POST", "/v1/tenants/{tenant_id}/migrate", "Bring the schema to head or a revision.",
                 ("tenantctl tenants migrate acme-clinic --target head",),
                 (TENANT, _opt("--target", default="head", show_default=True)), body=("target",), starts_work=True),
        Endpoint("move", "POST", "/v1/tenants/{tenant_id}/move", "Move the tenant to another database server.",
                 ("tenantctl tenants move acme-clinic --server pg2", "tenantctl tenants move acme-clinic --server pg2 "
                  "--mode offline"),
                 (TENANT, _opt("--server", required=True), _opt("--mode", type=click.Choice(["online", "offline"]))),
                 body=("server", "mode"), starts_work=True),
        Endpoint("delete", "DELETE", "/v1/tenants/{tenant_id}", "Delete: final backup, then retire the database for the grace period.",
                 ("tenantctl tenants delete acme-clinic --yes",),
                 (TENANT, _opt("--final-backup/--no-final-backup", default=True, show_default=True),
                  _opt("--purge", is_flag=True, help="Also destroy its backup key and backups.")),
                 query=("final_backup", "purge"), starts_work=True,
                 confirm="Delete the tenant (its database kept for the grace period; with --purge, dropped at once)?"),
        Endpoint("undelete", "POST", "/v1/tenants/{tenant_id}/undelete",
                 "Undelete: within the grace period, the tenant back as it was (its revoked tokens stay revoked).",
                 ("tenantctl tenants undelete acme-clinic",), (TENANT,), starts_work=True),
    )),
    "operations": ("Asynchronous operations.", (
        Endpoint("list", "GET", "/v1/operations", "List operations, newest first.",
                 ("tenantctl operations list --status failed",),
                 (_opt("--tenant", "tenant_id"), STATUS, _opt("--kind"), LIMIT),
                 query=("tenant_id", "status", "kind", "page_size"), columns=OPERATION_COLUMNS),
        Endpoint("show", "GET", "/v1/operations/{operation_id}", "One operation; --follow watches it to its end.",
                 ("tenantctl operations show 5f0c... --follow",), (_arg("operation_id"),)),
        Endpoint("retry", "POST", "/v1/operations/{operation_id}/retry", "Run a failed operation again.",
                 ("tenantctl operations retry 5f0c...",), (_arg("operation_id"),), starts_work=True),
        Endpoint("cancel", "POST", "/v1/operations/{operation_id}/cancel",
                 "Cancel a queued or running operation (a running one stops at its next safe step).",
                 ("tenantctl operations cancel 5f0c...",), (_arg("operation_id"),)),
    )),
    "drills": ("Restore drills: a tenant's newest backup restored into a scratch database and checked.", (
        Endpoint("list", "GET", "/v1/drills", "Drills, newest first (every tenant's, or --tenant's).",
                 ("tenantctl drills list --result failed", "tenantctl drills list --tenant acme-clinic"),
                 (_opt("--tenant", "tenant_id"), _opt("--result", type=click.Choice(("running", "passed", "failed"))), LIMIT),
                 query=("result", "page_size"), columns=DRILL_COLUMNS,
                 narrowed=("tenant_id", "/v1/tenants/{tenant_id}/drills")),
    )),
    "backups": ("Encrypted per-tenant backups and restores.", (
        Endpoint("create", "POST", "/v1/tenants/{tenant_id}/backups", "Back a tenant up now.",
                 ("tenantctl backups create acme-clinic",),
                 (TENANT, _opt("--expires-in-days", type=click.IntRange(1, 3650))), body=("expires_in_days",),
                 starts_work=True),
        Endpoint("list", "GET", "/v1/tenants/{tenant_id}/backups", "A tenant's backups, newest first.",
                 ("tenantctl backups list acme-clinic --json",), (TENANT, STATUS, LIMIT),
                 query=("status", "page_size"), columns=BACKUP_COLUMNS),
        Endpoint("show", "GET", "/v1/backups/{backup_id}", "One backup and its manifest.",
                 ("tenantctl backups show 9b1e...",), (_arg("backup_id"),)),
        Endpoint("restore", "POST", "/v1/tenants/{tenant_id}/restore",
                 "Restore a backup in place (a safety backup first), or as a new tenant.",
                 ("tenantctl backups restore acme-clinic 9b1e...",
                  "tenantctl backups restore acme-clinic 9b1e... --new-tenant acme-copy"),
                 (TENANT, _arg("backup_id"), _opt("--new-tenant", "new_tenant_id"),
                  _opt("--safety-backup/--no-safety-backup", default=True, show_default=True)),
                 body=("backup_id", "new_tenant_id", "safety_backup"), starts_work=True,
                 derived=lambda o: {"mode": "new_tenant" if o.get("new_tenant_id") else "in_place"}),
        Endpoint("policy", "GET", "/v1/tenants/{tenant_id}/backup-policy", "A tenant's retention policy and RPO.",
                 ("tenantctl backups policy acme-clinic",), (TENANT,)),
    )),
    "migrations": ("Bulk schema migration runs.", (
        Endpoint("run", "POST", "/v1/migration-runs", "Start a bulk migration run.",
                 ("tenantctl migrations run --target head --concurrency 8",
                  "tenantctl migrations run --waves 1,10,100 --pause 60 --check 'select count(*) from leads "
                  "where score is null' --follow"),
                 (_opt("--target", default="head", show_default=True),
                  _opt("--tenant", "tenants", multiple=True, default=None, help="Only these (repeat)."),
                  _opt("--concurrency", type=int), _opt("--canary", type=int), _opt("--max-failures", type=int),
                  _opt("--backup-first/--no-backup-first", "backup_first", default=None), _opt("--dry-run", is_flag=True, default=None),
                  _opt("--waves", help="Staged waves as cumulative percents, e.g. 1,10,100."),
                  _opt("--pause", type=click.IntRange(0), help="Seconds to wait after each wave but the last."),
                  _opt("--manual-pause", is_flag=True, help="Wait after each wave until `migrations continue`."),
                  _opt("--check", help="SQL that must return 0 on every tenant a wave migrated."),
                  _opt("--check-timeout", "check_timeout_seconds", type=float),
                  _opt("--rollback-on-failure", is_flag=True, default=None,
                       help="Roll back every tenant moved when a wave fails its budget or gate.")),
                 body=("target", "tenants", "concurrency", "canary", "max_failures", "backup_first", "dry_run",
                       "check", "check_timeout_seconds", "rollback_on_failure"),
                 derived=lambda o: {"waves": waves_body(o["waves"], o["pause"], o["manual_pause"], o["max_failures"])},
                 follows_run=True),
        Endpoint("continue", "POST", "/v1/migration-runs/{run_id}/continue",
                 "End the pause after the current wave: the next wave starts.",
                 ("tenantctl migrations continue 3c2d... --follow",), (_arg("run_id"),), follows_run=True),
        Endpoint("rollback", "POST", "/v1/migration-runs/{run_id}/rollback",
                 "Bring every tenant a failed or cancelled run moved back to its starting revision.",
                 ("tenantctl migrations rollback 3c2d... --follow",), (_arg("run_id"),), follows_run=True),
        Endpoint("list", "GET", "/v1/migration-runs", "Migration runs, newest first.",
                 ("tenantctl migrations list",), (STATUS, LIMIT), query=("status", "page_size"),
                 columns=("id", "status", "target_revision", "counts", "created_at", "error")),
        Endpoint("status", "GET", "/v1/migration-runs/{run_id}", "One run with its per-tenant items.",
                 ("tenantctl migrations status 3c2d... --json", "tenantctl migrations status 3c2d... --follow"),
                 (_arg("run_id"),), follows_run=True),
        Endpoint("resume", "POST", "/v1/migration-runs/{run_id}/resume", "Resume a stopped run.",
                 ("tenantctl migrations resume 3c2d...",), (_arg("run_id"),)),
        Endpoint("cancel", "POST", "/v1/migration-runs/{run_id}/cancel", "Cancel a run.",
                 ("tenantctl migrations cancel 3c2d...",), (_arg("run_id"),)),
        Endpoint("drift", "GET", "/v1/migrations/drift", "Tenants whose schema differs from their revision.",
                 ("tenantctl migrations drift",)),
    )),
    "servers": ("Tenant database servers.", (
        Endpoint("list", "GET", "/v1/servers", "Servers with their load and capacity.", ("tenantctl servers list",),
                 columns=("name", "host", "port", "status", "tenants", "max_tenants")),
        Endpoint("show", "GET", "/v1/servers/{name}", "One server.", ("tenantctl servers show default",),
                 (_arg("name"),)),
        Endpoint("add", "POST", "/v1/servers", "Register a server (its admin URL read from a file).",
                 ("tenantctl servers add pg2 --admin-url-file ./pg2-url",),
                 (_arg("name"), _opt("--admin-url-file", "admin_url", type=click.File(), required=True,
                                     help="A file holding the admin URL (keeps it out of shell history)."),
                  _opt("--max-tenants", type=int)), body=("name", "admin_url", "max_tenants")),
        Endpoint("remove", "DELETE", "/v1/servers/{name}", "Unregister a server that holds no tenant.",
                 ("tenantctl servers remove pg2 --yes",), (_arg("name"),), confirm="Unregister this server?"),
        Endpoint("drain", "POST", "/v1/servers/{name}/drain",
                 "Move every tenant off a server as a run (--no-move: only stop placing new ones; "
                 "--undo: place again).",
                 ("tenantctl servers drain pg1 --concurrency 4", "tenantctl servers drain pg1 --undo"),
                 (_arg("name"), _opt("--undo", is_flag=True), _opt("--move/--no-move", "move_tenants", default=True),
                  _opt("--concurrency", type=int), _opt("--mode", type=click.Choice(["online", "offline"]))),
                 body=("move_tenants", "concurrency", "mode"), derived=lambda o: {"draining": not o["undo"]}),
        Endpoint("drain-runs", "GET", "/v1/drain-runs", "Drain runs, newest first.",
                 ("tenantctl servers drain-runs", "tenantctl servers drain-runs --json"), (LIMIT,),
                 query=("page_size",), columns=("id", "server", "status", "counts", "created_at", "error")),
        Endpoint("drain-status", "GET", "/v1/drain-runs/{run_id}", "A drain run with its per-tenant items.",
                 ("tenantctl servers drain-status 7a1b... --json",), (_arg("run_id"),)),
    )),
    "tokens": ("API tokens (`tokens create` runs locally: it makes the first one).", (
        Endpoint("list", "GET", "/v1/tokens", "API tokens (never their secret).",
                 ("tenantctl tokens list --tenant acme-clinic",),
                 (_opt("--tenant", "tenant_id"), _opt("--include-revoked", is_flag=True, default=None), LIMIT),
                 query=("tenant_id", "include_revoked", "page_size"),
                 columns=("id", "name", "role", "tenant_id", "expires_at", "last_used_at", "revoked_at")),
        Endpoint("revoke", "DELETE", "/v1/tokens/{token_id}", "Revoke a token.", ("tenantctl tokens revoke 1f2e...",),
                 (_arg("token_id"),)),
    )),
    "plans": ("Plans and their per-tenant limits.", (
        Endpoint("list", "GET", "/v1/plans", "Plans and their limits.", ("tenantctl plans list",),
                 columns=("name", "connection_limit", "statement_timeout_ms", "storage_quota_bytes",
                          "backup_rpo_hours", "description")),
        Endpoint("show", "GET", "/v1/plans/{name}", "One plan.", ("tenantctl plans show standard",), (_arg("name"),)),
        Endpoint("create", "POST", "/v1/plans", "Create a plan.",
                 ("tenantctl plans create premium --connection-limit 40 --backup-rpo-hours 4",),
                 (_arg("name"), *PLAN_LIMITS), body=("name", *PLAN_FIELDS)),
        Endpoint("set", "PATCH", "/v1/plans/{name}", "Change a plan's limits (applied to its tenants' roles).",
                 ("tenantctl plans set premium --connection-limit 60",), (_arg("name"), *PLAN_LIMITS),
                 body=PLAN_FIELDS),
    )),
    "": ("", (
        Endpoint("audit", "GET", "/v1/audit-events", "Who did what to which tenant, newest first.",
                 ("tenantctl audit --tenant acme-clinic --action 'tenant.*'",
                  "tenantctl audit --since 2026-11-01T00:00:00Z"),
                 (_opt("--tenant", "tenant_id"), _opt("--actor"),
                  _opt("--action", help="Exact, or a family: 'tenant.*'."),
                  _opt("--since", help="ISO 8601 with a time zone."),
                  _opt("--until", help="ISO 8601 with a time zone."), LIMIT),
                 query=("tenant_id", "actor", "action", "since", "until", "page_size"),
                 columns=("at", "actor", "action", "tenant_id", "operation_id", "details")),
    )),
    "queues": ("Job queues and workers.", (
        Endpoint("list", "GET", "/v1/queues", "The job queues: depth and oldest job.", ("tenantctl queues list",)),
        Endpoint("workers", "GET", "/v1/workers", "Workers and schedulers alive.", ("tenantctl queues workers",)),
    )),
    "fleet": ("The fleet as a whole.", (
        Endpoint("reconcile", "POST", "/v1/fleet/reconcile",
                 "Report orphans, missing databases, leftovers and drift; --apply repairs what is safe.",
                 ("tenantctl fleet reconcile --json", "tenantctl fleet reconcile --apply"),
                 (_opt("--apply", "apply_repairs", is_flag=True, help="Repair what is safe (default: report only)."),),
                 derived=lambda o: {"dry_run": not o["apply_repairs"]}),
    )),
}

# Commands that stay local (they are the processes, or bootstrap the API's first token).
LOCAL_COMMANDS = ("serve", "worker", "scheduler")
LOCAL_SUBCOMMANDS = {"catalog": None, "tokens": ("create",)}


def _split(spec: str) -> tuple[str, str]:
    key, _, param = spec.partition("=")
    return key, param or key


def _value(raw: Any) -> Any:
    if isinstance(raw, tuple):
        return list(raw) or None
    if hasattr(raw, "read"):
        return raw.read().strip()
    return raw


def follow_operation(client: ApiClient, operation: dict[str, Any], as_json: bool) -> None:
    """A progress bar (percent, bytes, step, elapsed, ETA) until the operation ends; then its record; exit 1
    if it did not succeed."""
    operation = follow_bar(operation, lambda op_id: client.call("GET", f"/v1/operations/{op_id}")[0])
    print_data(operation, (), as_json)
    if operation["status"] != "succeeded":
        raise ApiCommandError(operation.get("error") or f"operation {operation['status']}")


def follow_migration_run(client: ApiClient, run: dict[str, Any], as_json: bool) -> None:
    """The run's progress line, and a line each time one of its waves changes, until it ends; then its
    counts (or JSON). Exit 1 unless it succeeded."""
    announcer = WaveAnnouncer()
    last = ""
    while True:
        run, _ = client.call("GET", f"/v1/migration-runs/{run['id']}")
        for line in announcer.lines(run):
            click.echo(line, err=True)
        line = run_line(run)
        if line != last:
            click.echo(line, err=True)
            last = line
        if ended(run):
            break
        time.sleep(POLL_SECONDS)
    if as_json:
        click.echo(json.dumps(run, indent=2))
    else:
        print_data({key: run.get(key) for key in ("id", "kind", "status", "target_revision", "counts", "error",
                                                  "rollback_run_id")}, (), False)
    if run["status"] != "succeeded":
        raise ApiCommandError(run.get("error") or f"migration run {run['status']}")


def _rows(client: ApiClient, path: str, query: dict[str, Any]) -> list[dict[str, Any]]:
    """Up to `query["page_size"]` rows of a list, page after page (the API's pages hold at most 100); when the
    list holds more, stderr says how many and how to see them."""
    limit = query.pop("page_size")
    size = min(limit, MAX_PAGE_SIZE)
    rows: list[dict[str, Any]] = []
    total = 0
    for page in range(1, limit // size + 2):
        data, response = client.call("GET", path, params={**query, "page": page, "page_size": size})
        rows.extend(data)
        total = json.loads(response.headers.get("X-Pagination") or "{}").get("total", len(rows))
        if len(data) < size or len(rows) >= limit:
            break
    if total > limit:
        click.echo(f"{limit} of {total} shown (--limit {total} shows every one)", err=True)
    return rows[:limit]


IDEMPOTENCY_KEY = _opt("--idempotency-key", help="Send this Idempotency-Key (default: a new one per invocation); "
                                                  "re-running with the same key never starts the work twice.")


def new_idempotency_key() -> str:
    return f"tenantctl-{uuid.uuid4()}"


def _invoke(endpoint: Endpoint, options: dict[str, Any]) -> None:
    as_json, wait = options.pop("as_json"), options.pop("wait", False)
    key = (options.pop("idempotency_key", None) or new_idempotency_key()) if endpoint.idempotent else None
    follow = options.pop("follow", False)
    client = ApiClient.from_env()
    path = endpoint.path
    if endpoint.narrowed and options.get(endpoint.narrowed[0]) is not None:
        path = endpoint.narrowed[1]
    path = re.sub(r"\{(\w+)\}", lambda m: urllib.parse.quote(str(options[m.group(1)]), safe=""), path)
    query = {key: _value(options.get(param)) for key, param in map(_split, endpoint.query)}
    body = {key: _value(options.get(param)) for key, param in map(_split, endpoint.body)}
    body.update(endpoint.derived(options) if endpoint.derived else {})
    query = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in query.items() if v is not None}
    body = {k: v for k, v in body.items() if v is not None}
    if endpoint.method == "GET" and "page_size" in query:
        data = _rows(client, path, query)
    else:
        data, _ = client.call(endpoint.method, path, params=query or None,
                              body=body if endpoint.method in ("POST", "PATCH", "PUT") else None,
                              idempotency_key=key)
    if endpoint.follows_run and follow:
        follow_migration_run(client, data, as_json)
    elif (endpoint.starts_work and wait) or follow:
        click.echo(f"operation {data['id']} ({data['kind']}) {data['status']}", err=True)
        follow_operation(client, data, as_json)
    else:
        print_data(data, endpoint.columns, as_json)
        if endpoint.method != "GET" and isinstance(data, dict) and data.get("status") == "failed":
            # Work that ended at once (a drain with nowhere to move to): exit 1, like a failed operation.
            raise ApiCommandError(data.get("error") or f"{endpoint.name} failed")


def endpoint_command(endpoint: Endpoint) -> click.Command:
    params = list(endpoint.params)
    if endpoint.starts_work:
        params.append(click.Option(["--wait/--no-wait", "--follow/--no-follow", "wait"], default=True,
                                   show_default=True, help="Follow the operation with a progress bar until it ends."))
    if endpoint.path == "/v1/operations/{operation_id}":
        params.append(click.Option(["--follow"], is_flag=True, help="Show progress until it ends."))
    elif endpoint.follows_run:  # as in local mode: both spellings where it starts work, not following by default
        spellings = ["--follow/--no-follow"] + (["--wait/--no-wait"] if endpoint.method == "POST" else [])
        params.append(click.Option([*spellings, "follow"], default=False, show_default=True,
                                   help="Show progress until it ends."))
    if endpoint.idempotent:
        params.append(IDEMPOTENCY_KEY)
    if endpoint.confirm:
        params.append(click.Option(["--yes"], is_flag=True, expose_value=False, is_eager=False,
                                   callback=_confirm(endpoint.confirm), help="Confirm without prompting."))
    params.append(click.Option(["--json", "as_json"], is_flag=True, help="Print the API's JSON answer."))
    epilog = "\b\nExamples:\n" + "\n".join(f"  {example}" for example in endpoint.examples)
    return click.Command(endpoint.name, params=params, help=f"{endpoint.help}\n\n{endpoint.method} {endpoint.path}",
                         epilog=epilog, short_help=endpoint.help,
                         callback=lambda **options: _invoke(endpoint, options))


def _confirm(prompt: str):
    def callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if not value and not click.confirm(prompt):
            ctx.abort()
    return callback


def all_pages(client: ApiClient, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every item of a paginated list, page after page."""
    items: list[dict[str, Any]] = []
    page = 1
    while True:
        data, _ = client.call("GET", path, params={**params, "page": page, "page_size": MAX_PAGE_SIZE})
        items.extend(data)
        if len(data) < MAX_PAGE_SIZE:
            return items
        page += 1


DRILLS_RUN_EXAMPLES = ("tenantctl drills run acme-clinic", "tenantctl drills run acme-clinic bella-clinic --json",
                       "tenantctl drills run --all --no-follow")


@click.command("run", epilog="\b\nExamples:\n" + "\n".join(f"  {e}" for e in DRILLS_RUN_EXAMPLES),
               short_help="Drill tenants' newest backups now.")
@click.argument("tenant_ids", nargs=-1)
@click.option("--all", "all_tenants", is_flag=True, help="Every active tenant.")
@click.option("--follow/--no-follow", default=True, show_default=True,
              help="Watch each drill to its end (they run side by side), then a table of how each ended.")
@click.option("--json", "as_json", is_flag=True, help="Print the operations as JSON.")
@click.option("--idempotency-key", help="Keys sent are KEY:TENANT (default: a new KEY per invocation); re-running "
                                       "with the same key never starts a tenant's drill twice.")
def drills_run(tenant_ids: tuple[str, ...], all_tenants: bool, follow: bool, as_json: bool,
               idempotency_key: str | None) -> None:
    """Drill TENANT_IDS' (or --all active tenants') newest backups: each restored into a scratch database and
    checked. Exits 1 if a followed drill did not pass.

    POST /v1/tenants/{tenant_id}/drills
    """
    if bool(tenant_ids) == all_tenants:
        raise click.UsageError("name tenants, or --all")
    client = ApiClient.from_env()
    if all_tenants:
        tenant_ids = tuple(t["id"] for t in all_pages(client, "/v1/tenants", {"status": "active"}))
    started = []
    key = idempotency_key or new_idempotency_key()
    for tenant_id in tenant_ids:
        op, _ = client.call("POST", f"/v1/tenants/{urllib.parse.quote(tenant_id, safe='')}/drills", body={},
                            idempotency_key=f"{key}:{tenant_id}")
        click.echo(f"tenant {tenant_id}: drill operation {op['id']}", err=True)
        started.append(op)
    follow_all(started, lambda op_id: client.call("GET", f"/v1/operations/{op_id}")[0], follow, as_json)


# Commands that do more than one request: (group, command).
API_COMMANDS: tuple[tuple[str, click.Command], ...] = (("drills", drills_run),)


def build_api_cli(local: click.Group) -> click.Group:
    """The CLI in API mode: the ENDPOINTS groups, plus the local-only commands taken from `local`."""
    api_cli = type(local)("tenantctl", help=local.help, params=list(local.params), callback=local.callback,
                          epilog=local.epilog)
    for group_name, (group_help, endpoints) in ENDPOINTS.items():
        group = click.Group(group_name, help=group_help) if group_name else api_cli
        for endpoint in endpoints:
            group.add_command(endpoint_command(endpoint))
        for target, command in API_COMMANDS:
            if target == group_name:
                group.add_command(command)
        if group is not api_cli:
            api_cli.add_command(group)
    for name in LOCAL_COMMANDS:
        if name in local.commands:
            api_cli.add_command(local.commands[name])
    for name, subcommands in LOCAL_SUBCOMMANDS.items():
        source = local.commands.get(name)
        if not isinstance(source, click.Group):
            continue
        target = api_cli.commands.get(name)
        if target is None:
            target = click.Group(name, help=source.help)
            api_cli.add_command(target)
        for sub in subcommands or source.commands:
            if sub in source.commands:
                target.add_command(source.commands[sub])
    return api_cli
