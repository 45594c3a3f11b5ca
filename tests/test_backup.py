"""Backups and restores end to end on the file:// store: round trips, clone, stored bytes, API access."""
from __future__ import annotations

from backup_support import (active_tenant, back_up, backup_cleanup, databases_like, fingerprint, restore,  # noqa: F401
                            store_root, write_rows)
from helpers import one, operation, roles, tenant


def test_round_trip_in_place_and_as_new_tenant(client, auth, run_jobs, ctx, settings, admin_url):
    active_tenant(client, auth, run_jobs, "bk-round")
    write_rows(ctx, "bk-round", "known")
    known = fingerprint(ctx, "bk-round")
    backup = back_up(client, auth, run_jobs, "bk-round")
    assert backup["status"] == "completed" and backup["trigger"] == "manual"
    assert tenant(client, auth, "bk-round")["last_backup_at"] == backup["completed_at"]

    # Change and delete rows after the backup.
    write_rows(ctx, "bk-round", "later", leads=5)
    from helpers import tenant_login
    with tenant_login(ctx, "bk-round") as conn:
        conn.execute("DELETE FROM leads WHERE full_name LIKE 'known lead 1%'")
        conn.execute("UPDATE procedures SET price = 1")
    assert fingerprint(ctx, "bk-round") != known

    done = restore(client, auth, run_jobs, "bk-round", backup["id"])
    assert done["status"] == "succeeded", done
    assert fingerprint(ctx, "bk-round") == known
    body = tenant(client, auth, "bk-round")
    assert body["status"] == "active"
    retired = done["result"]["retired_database"]
    assert databases_like(admin_url, "tenant_bk_round%") == {"tenant_bk_round_db", retired}
    assert done["result"]["safety_backup_id"]

    cloned = restore(client, auth, run_jobs, "bk-round", backup["id"], mode="new_tenant", new_tenant_id="bk-clone")
    assert cloned["status"] == "succeeded", cloned
    assert tenant(client, auth, "bk-clone")["status"] == "active"
    assert fingerprint(ctx, "bk-clone") == known
    assert "tenant_bk_clone" in roles(admin_url, "tenant_bk_clone")
    assert one(admin_url, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'tenant_bk_clone_db'") \
        == "tenant_bk_clone"
    assert one(admin_url, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                          "WHERE n.nspname = 'public' AND pg_get_userbyid(c.relowner) <> 'tenant_bk_clone'",
               dbname="tenant_bk_clone_db") == 0
