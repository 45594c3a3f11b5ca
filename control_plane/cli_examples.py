"""Examples for every local-mode tenantctl command, shown under its --help (API-mode commands carry their
own, see cli_api.ENDPOINTS). One place, so a new command's examples are one entry here."""
from __future__ import annotations

import click

EXAMPLES: dict[str, tuple[str, ...]] = {
    "catalog upgrade": ("tenantctl catalog upgrade",),
    "catalog backup": ("tenantctl catalog backup", "tenantctl catalog backup --json"),
    "catalog backups": ("tenantctl catalog backups --json",),
    "catalog restore": ("tenantctl catalog restore latest",),
    "serve": ("tenantctl serve --host 0.0.0.0 --port 8000 --workers 4",),
    "worker": ("tenantctl worker", "tenantctl worker --burst"),
    "scheduler": ("tenantctl scheduler", "tenantctl scheduler --once --json"),
    "tenants create": ("tenantctl tenants create acme-clinic --name 'Acme Clinic' --admin-email owner@acme.example",
                       "tenantctl tenants create acme-clinic --name Acme --admin-email a@acme.example --no-wait --json"),
    "tenants list": ("tenantctl tenants list --status active", "tenantctl tenants list -q acme --json"),
    "tenants show": ("tenantctl tenants show acme-clinic",),
    "tenants suspend": ("tenantctl tenants suspend acme-clinic",),
    "tenants resume": ("tenantctl tenants resume acme-clinic --json",),
    "tenants migrate": ("tenantctl tenants migrate acme-clinic --target head",),
    "tenants move": ("tenantctl tenants move acme-clinic --to pg2", "tenantctl tenants move acme-clinic --to pg2 --offline"),
    "tenants delete": ("tenantctl tenants delete acme-clinic --yes", "tenantctl tenants delete acme-clinic --purge --yes"),
    "tenants undelete": ("tenantctl tenants undelete acme-clinic", "tenantctl tenants undelete acme-clinic --no-wait --json"),
    "operations show": ("tenantctl operations show 5f0c... --follow", "tenantctl operations show 5f0c... --json"),
    "operations retry": ("tenantctl operations retry 5f0c...",),
    "operations cancel": ("tenantctl operations cancel 5f0c...", "tenantctl operations cancel 5f0c... --no-wait --json"),
    "operations sweep": ("tenantctl operations sweep",),
    "servers list": ("tenantctl servers list", "tenantctl servers list --json"),
    "servers add": ("tenantctl servers add pg2 --admin-url-file ./pg2-url --max-tenants 500",),
    "servers set-url": ("tenantctl servers set-url pg2 --admin-url-file ./pg2-url",),
    "servers drain": ("tenantctl servers drain pg1 --concurrency 4", "tenantctl servers drain pg1 --no-move",
                      "tenantctl servers drain pg1 --undo"),
    "servers drain-status": ("tenantctl servers drain-status 7a1b... --follow", "tenantctl servers drain-status 7a1b... --json"),
    "tokens create": ("tenantctl tokens create --role super_admin --name ops",
                      "tenantctl tokens create --role tenant_admin --tenant acme-clinic --expires-in 30d"),
    "tokens list": ("tenantctl tokens list --tenant acme-clinic --json",),
    "tokens revoke": ("tenantctl tokens revoke 1f2e...",),
    "audit": ("tenantctl audit --tenant acme-clinic --action 'tenant.*'", "tenantctl audit --since 2026-11-01 --json"),
    "plans list": ("tenantctl plans list --json",),
    "plans create": ("tenantctl plans create premium --connection-limit 40 --backup-rpo-hours 4",),
    "plans set": ("tenantctl plans set premium --connection-limit 60", "tenantctl plans set premium --unset storage_quota_bytes"),
    "plans apply": ("tenantctl plans apply premium",),
    "runtime grant": ("tenantctl runtime grant tenant_runtime",),
    "runtime events-user": ("tenantctl runtime events-user runtime-events --password-file ./events-password",),
    "backups create": ("tenantctl backups create acme-clinic", "tenantctl backups create acme-clinic --expires-in-days 90"),
    "backups list": ("tenantctl backups list acme-clinic --json",),
    "backups show": ("tenantctl backups show 9b1e...",),
    "backups decrypt": ("tenantctl backups decrypt 9b1e... -o acme.dump",),
    "backups restore": ("tenantctl backups restore acme-clinic 9b1e...",
                        "tenantctl backups restore acme-clinic 9b1e... --new-tenant acme-copy"),
    "backups prune": ("tenantctl backups prune", "tenantctl backups prune --tenant acme-clinic"),
    "backups policy": ("tenantctl backups policy acme-clinic", "tenantctl backups policy acme-clinic --keep-last 14 --rpo-hours 6"),
    "keys rotate": ("tenantctl keys rotate",),
    "migrations run": ("tenantctl migrations run --target head --concurrency 8 --follow",
                       "tenantctl migrations run --dry-run", "tenantctl migrations run --canary 2 --max-failures 3 --json",
                       "tenantctl migrations run --waves 1,10,100 --pause 60 --check 'select count(*) from leads "
                       "where score is null' --rollback-on-failure --follow"),
    "migrations status": ("tenantctl migrations status 3c2d... --follow", "tenantctl migrations status 3c2d... --json"),
    "migrations list": ("tenantctl migrations list --status failed",),
    "migrations resume": ("tenantctl migrations resume 3c2d... --follow",),
    "migrations cancel": ("tenantctl migrations cancel 3c2d...",),
    "migrations continue": ("tenantctl migrations continue 3c2d... --follow",),
    "migrations rollback": ("tenantctl migrations rollback 3c2d... --follow", "tenantctl migrations rollback 3c2d... --json"),
    "migrations drift": ("tenantctl migrations drift", "tenantctl migrations drift --check --json"),
    "fleet recover": ("tenantctl fleet recover --server pg2 --parallel 8",
                      "tenantctl fleet recover --server pg2 --admin-url-file ./new-pg2-url --json"),
    "fleet reconcile": ("tenantctl fleet reconcile", "tenantctl fleet reconcile --apply --json"),
    "drills list": ("tenantctl drills list --result failed", "tenantctl drills list --tenant acme-clinic --json"),
}


def epilog(examples: tuple[str, ...]) -> str:
    return "\b\nExamples:\n" + "\n".join(f"  {example}" for example in examples)


def add_examples(group: click.Group, path: str = "") -> None:
    """Each command of the tree gets its EXAMPLES entry as its epilog (unless it has examples already)."""
    for name, command in group.commands.items():
        full = f"{path} {name}".strip()
        if isinstance(command, click.Group):
            add_examples(command, full)
        elif full in EXAMPLES and "Examples:" not in (command.epilog or ""):
            command.epilog = epilog(EXAMPLES[full])
