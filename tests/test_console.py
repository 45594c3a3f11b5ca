"""The web console in a real headless chromium (Debian's, driven by Playwright): sign in, create a tenant
and watch it become active, back it up, restore it, see a failure and retry it; a tenant admin sees
only its own tenant. Screenshots go to .devstack/screenshots/ (git-ignored: a test run never changes the
repository; copy them to docs/screenshots/ to refresh the README's)."""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from control_plane.catalog.models import OperationKind, TokenRole
from control_plane.services.auth import create_token
from helpers import create_tenant, wait_until

SCREENSHOTS = Path(__file__).resolve().parents[1] / ".devstack" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SLOW = 90_000  # ms: provisioning and backups on 2 shared cores


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        yield context.new_page()
    finally:
        context.close()


def sign_in(page: Page, base_url: str, token: str) -> None:
    page.goto(f"{base_url}/console")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def test_super_admin_creates_backs_up_restores_and_retries(page: Page, live_api: str, ctx, admin_url) -> None:
    token = create_token(ctx, TokenRole.SUPER_ADMIN, "console")[1]
    sign_in(page, live_api, token)
    expect(page.get_by_text("super admin (console)")).to_be_visible()
    assert token not in page.url

    page.get_by_label("New tenant id").fill("console-clinic")
    page.get_by_label("Name").fill("Console Clinic")
    page.get_by_label("Admin email").fill("owner@console.example")
    page.get_by_role("button", name="Create tenant").click()
    row = page.locator("#tenant-list tr", has_text="console-clinic")
    expect(row.locator(".badge")).to_have_text("active", timeout=SLOW)
    expect(row).to_contain_text("never")  # no backup yet: past the RPO, shown red
    expect(row.locator(".stale")).to_be_visible()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "console-tenants.png", full_page=True)

    row.get_by_role("link", name="console-clinic").click()
    expect(page.get_by_role("heading", name="Console Clinic active")).to_be_visible()
    page.get_by_role("button", name="Back up now").click()
    backup_row = page.locator("#tenant-backups tbody tr").first
    expect(backup_row.locator(".badge")).to_have_text("completed", timeout=SLOW)
    page.get_by_role("button", name="Run drill").click()
    expect(page.get_by_role("status")).to_contain_text("Drill: operation")
    drill_row = page.locator("#tenant-operations tr", has_text="drill")
    expect(drill_row.locator(".badge")).to_have_text("succeeded", timeout=SLOW)
    expect(page.locator("#tenant-drills tbody tr").first.locator(".badge")).to_have_text("passed")

    backup_row.get_by_role("button", name="Restore").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("replaces the current database tenant_console_clinic_db")
    dialog.get_by_label("New tenant id (optional)").fill("console-copy")  # a clone: the original stays as is
    dialog.get_by_role("button", name="Restore").click()
    expect(page.get_by_role("status")).to_contain_text("Restore: operation")
    page.goto(f"{live_api}/console#/operations")
    restore_row = page.locator("#operations tr", has_text="console-copy")
    expect(restore_row.locator(".badge")).to_have_text("succeeded", timeout=SLOW)
    expect(restore_row).to_contain_text("restore")
    expect(restore_row).to_contain_text(" of ~")  # the archive bytes restored, as the bar shows them
    page.get_by_label("Kind").select_option("restore")
    expect(page.locator("#operations tbody tr")).to_have_count(1)
    page.goto(f"{live_api}/console#/tenants/console-clinic")

    # A failure: the database refuses connections, so a backup fails with PostgreSQL's reason.
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute('ALTER DATABASE "tenant_console_clinic_db" ALLOW_CONNECTIONS false')
    try:
        page.get_by_role("button", name="Back up now").click()
        failed = page.locator("#tenant-operations tr", has=page.locator(".badge.failed")).first
        expect(failed).to_contain_text("backup", timeout=SLOW)
        expect(failed.locator(".error")).not_to_be_empty()
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute('ALTER DATABASE "tenant_console_clinic_db" ALLOW_CONNECTIONS true')
    page.screenshot(path=SCREENSHOTS / "console-tenant.png", full_page=True)
    failed.get_by_role("button", name="Retry").click()
    expect(page.locator("#tenant-operations .badge.failed")).to_have_count(0, timeout=SLOW)
    expect(page.locator("#tenant-backups .badge", has_text="completed")).to_have_count(2, timeout=SLOW)

    # Delete keeps the database for the grace period; the deleted tenant's page offers Undelete.
    page.get_by_role("button", name="Delete…").click()
    page.get_by_role("dialog").get_by_label("Type console-clinic to confirm").fill("console-clinic")
    page.get_by_role("dialog").get_by_role("button", name="Delete tenant").click()
    expect(page.locator("#tenant-operations tr", has_text="delete").first.locator(".badge")).to_have_text(
        "succeeded", timeout=SLOW)
    page.reload()
    expect(page.get_by_role("heading", name="Console Clinic deleted")).to_be_visible()
    page.get_by_role("button", name="Undelete").click()
    expect(page.get_by_role("status")).to_contain_text("Undelete: operation")
    expect(page.locator("#tenant-operations tr", has_text="undelete").first.locator(".badge")).to_have_text(
        "succeeded", timeout=SLOW)
    page.reload()
    expect(page.get_by_role("heading", name="Console Clinic active")).to_be_visible()

    page.get_by_role("link", name="Servers").click()
    expect(page.locator("#servers tr", has_text="default")).to_contain_text("tenants")
    page.get_by_role("link", name="Runs").click()
    expect(page.locator("#runs")).to_contain_text("No migration runs.")
    expect(page.locator("#drain-runs")).to_contain_text("No drain runs.")
    page.get_by_role("link", name="Drills").click()
    expect(page.locator("#drills tr", has_text="console-clinic").locator(".badge")).to_have_text("passed")


def test_tenant_admin_sees_only_its_tenant(page: Page, live_api: str, ctx, client, auth) -> None:
    for tenant_id in ("mine-clinic", "other-clinic"):
        create_tenant(client, auth, tenant_id)
    wait_until(lambda: all(client.get(f"/v1/tenants/{t}", headers=auth).get_json()["status"] == "active"
                           for t in ("mine-clinic", "other-clinic")), "both tenants active")
    token = create_token(ctx, TokenRole.TENANT_ADMIN, "clinic admin", "mine-clinic")[1]
    sign_in(page, live_api, token)
    expect(page.get_by_text("tenant admin of mine-clinic")).to_be_visible()
    expect(page.get_by_role("heading", name="Clinic mine-clinic active")).to_be_visible()
    expect(page.get_by_role("link", name="Servers")).to_be_hidden()
    expect(page.get_by_role("button", name="Delete…")).to_have_count(0)

    page.goto(f"{live_api}/console#/tenants/other-clinic")
    expect(page.get_by_role("alert")).to_contain_text("another tenant")
    page.goto(f"{live_api}/console#/tenants")
    expect(page.locator("#tenant-list tbody tr")).to_have_count(1)
    expect(page.locator("#tenant-list")).to_contain_text("mine-clinic")
    expect(page.locator("#tenant-list")).not_to_contain_text("other-clinic")


def test_the_operations_kind_filter_offers_every_kind() -> None:
    """A kind the filter lacks cannot be listed on its own (undelete was missing)."""
    script = (Path(__file__).resolve().parents[1] / "control_plane/console/static/console.js").read_text()
    offered = set(re.findall(r'"(\w+)"', re.search(r'choice\("op-kind", \[(.*?)\]', script).group(1)))
    assert {kind.value for kind in OperationKind} <= offered
