"""What tenantctl prints, in both modes: data as a rich table or JSON (--json), and long work as a progress
bar (percent, step, elapsed and ETA, and for a backup, restore or move the bytes done of the estimated total
its operation records, see services.byte_progress)."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import click
from rich import filesize
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

# Exit codes, the same in both modes: 0 ok, 1 the operation failed (or another refusal), 2 usage or invalid
# input, 3 not found, 4 conflict or busy.
EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT = 1, 2, 3, 4
EXIT_BY_STATUS = {400: EXIT_USAGE, 422: EXIT_USAGE, 404: EXIT_NOT_FOUND, 409: EXIT_CONFLICT, 423: EXIT_CONFLICT}
POLL_SECONDS = 0.5  # a human-facing refresh, not synchronisation
FINISHED = ("succeeded", "failed", "cancelled")
OPERATION_COLUMNS = ("id", "kind", "tenant_id", "status", "progress", "step", "error")

Fetch = Callable[[str], dict[str, Any]]


class CommandError(click.ClickException):
    """A refusal or a failure: printed as `Error: ...`, with its exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--json`: print the data as JSON (what the API answers) instead of a table."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(command)


def wait_option(help: str = "Follow the operation with a progress bar until it ends.") -> Callable[..., Any]:
    """`--wait/--no-wait`, also spelled `--follow/--no-follow`: watch the work started to its end (the default)."""
    return click.option("--wait/--no-wait", "--follow/--no-follow", "wait", default=True, show_default=True, help=help)


def _render(value: Any, one_per_line: bool = False) -> str:
    """A cell's text; with `one_per_line` (a record's value), a dict as one `key: value` line per key."""
    if value is None:
        return "-"
    if isinstance(value, dict) and one_per_line and value:
        return "\n".join(f"{key}: {_render(item)}" for key, item in value.items())
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def print_data(data: Any, columns: tuple[str, ...], as_json: bool) -> None:
    """JSON (--json), else a table: one row per item of a list, a FIELD/VALUE table for one record.

    No value is ever cut short (an id to copy, a one-time admin password): a list is as wide as its widest
    row needs (the terminal wraps long lines, as `kubectl get` does), a record's values wrap in their column."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    console = Console()
    if isinstance(data, list):
        table = Table(*(column.upper() for column in columns or (sorted(data[0]) if data else ())))
        for row in data:
            table.add_row(*(_render(row.get(column)) for column in columns or sorted(row)))
        natural = Measurement.get(console, console.options.update_width(10**6), table).maximum
        Console(width=max(console.width, natural)).print(table)
    elif isinstance(data, dict):
        table = Table("FIELD", "VALUE", show_header=False)
        table.columns[1].overflow = "fold"
        for key, value in data.items():
            table.add_row(key, _render(value, one_per_line=True))
        console.print(table)
    elif data is not None:
        click.echo(_render(data))


def completion(operation: dict[str, Any]) -> dict[str, Any]:
    """The bar's position: bytes done of the estimated total when the operation records them, else its percent."""
    result = operation.get("result") or {}
    done, total = result.get("bytes_done"), result.get("bytes_total")
    if isinstance(done, int) and isinstance(total, int) and total > 0:
        return {"completed": min(done, total), "total": total,
                "bytes": f"{filesize.decimal(done)} of ~{filesize.decimal(total)}"}
    return {"completed": operation.get("progress") or 0, "total": 100, "bytes": ""}


def follow_bar(operation: dict[str, Any], fetch: Fetch) -> dict[str, Any]:
    """A bar on stderr until the operation (a dict as the API shows it) ends; returns its last state."""
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[bytes]}"), TextColumn("{task.fields[step]}"))
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(f"{operation['kind']} {operation.get('tenant_id') or ''}", total=100, step="",
                                 bytes="")
        while True:
            progress.update(task, step=operation.get("step") or "", **completion(operation))
            if operation["status"] in FINISHED:
                return operation
            time.sleep(POLL_SECONDS)
            operation = fetch(operation["id"])


def follow_all(operations: list[dict[str, Any]], fetch: Fetch, follow: bool, as_json: bool) -> None:
    """Operations started together (they run side by side on the workers): with `follow`, each watched to its
    end in turn; then a table (or JSON list) of them; exit 1 if a followed one did not succeed."""
    if follow:
        operations = [follow_bar(op, fetch) for op in operations]
    print_data(operations, OPERATION_COLUMNS, as_json)
    failed = [op for op in operations if follow and op["status"] != "succeeded"]
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(operations)} did not succeed: "
                                   + ", ".join(op.get("tenant_id") or op["id"] for op in failed))
