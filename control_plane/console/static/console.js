// The control plane's web console: a small single-page app over the same /v1 API as everyone else.
// The token lives in sessionStorage (this tab only) and travels in the Authorization header: no cookie,
// so a forged cross-site request carries no credentials. Text is always set with textContent (no HTML
// from data). To add a page: a function (params, view) that renders into `view`, and a line in ROUTES.
"use strict";

const TOKEN_KEY = "tenantctl.console.token";
const RPO_HOURS = Number(document.body.dataset.rpoHours || 24);  // the default RPO, where a tenant comes without its own
const POLL_MS = 1500;
let me = null;          // {role, tenant_id, name} of the signed-in token
let generation = 0;     // bumped on every navigation: stale pollers stop

// ---------------------------------------------------------------- small helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function api(method, path, body) {
  const headers = { "Authorization": `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}`, "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                       credentials: "omit", cache: "no-store" });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (response.status === 401 && path !== "/v1/me") { signOut("Your token was refused: sign in again."); }
  if (!response.ok) {
    const problem = data || {};
    if (problem.errors) problem.detail = `${problem.detail || problem.title}: ${JSON.stringify(problem.errors)}`;
    throw new ApiError(response.status, problem);
  }
  const pagination = response.headers.get("X-Pagination");
  return { data, total: pagination ? JSON.parse(pagination).total : undefined };
}

function flash(message, bad) {
  const el = document.getElementById("flash");
  el.textContent = message;
  el.className = bad ? "bad" : "";
}

// Run an action from a button: disable it meanwhile, report the outcome, refresh the page.
async function act(button, label, call) {
  button.disabled = true;
  try {
    const { data } = await call();
    // A provisioning finished within the request answers with the generated admin password: its only showing.
    const password = data && data.result && data.result.admin_password;
    const secret = password ? `; admin password (shown once): ${password}` : "";
    flash(data && data.kind ? `${label}: operation ${data.id} ${data.status}${secret}` : `${label}: done`);
    route();
  } catch (error) {
    flash(`${label} failed: ${error.message}`, true);
  } finally {
    button.disabled = false;
  }
}

function badge(status) { return h("span", { class: `badge ${status}`, text: status }); }

function age(iso) {
  if (!iso) return { text: "never", hours: Infinity };
  const hours = (Date.now() - Date.parse(iso)) / 3.6e6;
  const text = hours < 1 ? `${Math.max(0, Math.round(hours * 60))} min ago`
    : hours < 48 ? `${Math.round(hours)} h ago` : `${Math.round(hours / 24)} days ago`;
  return { text, hours };
}

function backupAge(iso, rpoHours) {
  const rpo = rpoHours || RPO_HOURS;  // the tenant's own RPO (policy, plan), as the API reads it
  const { text, hours } = age(iso);
  const stale = hours > rpo;
  return h("span", { class: stale ? "stale" : "", title: stale ? `older than the ${rpo} h RPO` : null }, text);
}

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return i ? `${n.toFixed(1)} ${units[i]}` : `${n} B`;
}

function when(iso) { return iso ? new Date(iso).toLocaleString() : "-"; }

function progressBar(value, label) {
  return h("progress", { max: 100, value: value || 0, "aria-label": label, text: `${value || 0}%` });
}

// columns: [[heading, row => cell content], ...]
function table(caption, columns, rows, empty) {
  if (!rows.length) return h("p", { class: "empty", text: empty || "Nothing here yet." });
  return h("table", {},
    h("caption", { class: "visually-hidden", text: caption }),
    h("thead", {}, h("tr", {}, columns.map(([heading]) => h("th", { scope: "col", text: heading })))),
    h("tbody", {}, rows.map(row => h("tr", {}, columns.map(([, cell]) => h("td", {}, cell(row)))))));
}

// A region re-filled every POLL_MS while its page is shown (progress bars move without a reload).
function live(region, fill) {
  const mine = generation;
  const tick = async () => {
    if (mine !== generation) return;
    try {
      const content = await fill();
      if (mine !== generation) return;
      region.replaceChildren(content);
    } catch (error) {
      if (mine === generation) region.replaceChildren(h("p", { class: "error", text: error.message }));
    }
    if (mine === generation) setTimeout(tick, POLL_MS);
  };
  tick();
  return region;
}

// A modal confirmation; `typed` makes the person type that text first. Resolves true when confirmed.
function confirmDialog(title, message, action, { typed, extra } = {}) {
  return new Promise(resolve => {
    const input = typed ? h("input", { id: "confirm-typed", autocomplete: "off", required: true }) : null;
    const ok = h("button", { type: "submit", class: "danger", disabled: Boolean(typed), text: action });
    const dialog = h("dialog", { "aria-labelledby": "dialog-title" },
      h("form", { method: "dialog" },
        h("h2", { id: "dialog-title", text: title }),
        h("p", { text: message }),
        extra || null,
        typed ? h("label", { for: "confirm-typed" }, `Type ${typed} to confirm`, input) : null,
        h("div", { class: "toolbar" }, ok,
          h("button", { type: "button", class: "secondary", text: "Cancel", onclick: () => dialog.close("cancel") }))));
    if (input) input.addEventListener("input", () => { ok.disabled = input.value !== typed; });
    ok.addEventListener("click", () => { dialog.returnValue = "ok"; });
    dialog.addEventListener("close", () => { dialog.remove(); resolve(dialog.returnValue === "ok"); });
    document.body.append(dialog);
    dialog.showModal();
  });
}

function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value !== "" && value !== undefined && value !== null) search.set(key, value);
  const text = search.toString();
  return text ? `?${text}` : "";
}

function isSuper() { return me && me.role === "super_admin"; }

// ---------------------------------------------------------------- operations (shared by several pages)

// Percent and step; for a backup, restore or move, the bytes done of the estimated total it records;
// for a move, from which server to which.
function opProgress(op) {
  const r = op.result || {};
  const label = `progress of ${op.kind} ${op.id}`;
  const route = op.kind === "move" && r.server ? h("div", { class: "muted", text: `${r.from_server || "?"} → ${r.server} (${r.mode || "auto"})` }) : null;
  if (Number.isInteger(r.bytes_done) && Number.isInteger(r.bytes_total) && r.bytes_total > 0) {
    const pct = Math.min(100, Math.round((100 * r.bytes_done) / r.bytes_total));
    return h("span", {}, progressBar(pct, label), ` ${bytes(r.bytes_done)} of ~${bytes(r.bytes_total)} `, op.step || "", route);
  }
  return h("span", {}, progressBar(op.progress, label), ` ${op.progress}% `, op.step || "", route);
}

function operationsTable(ops) {
  return table("Operations", [
    ["Operation", op => h("code", { text: op.id.slice(0, 8), title: op.id })],
    ["Kind", op => op.kind],
    ["Tenant", op => op.tenant_id ? h("a", { href: `#/tenants/${op.tenant_id}`, text: op.tenant_id }) : "-"],
    ["Status", op => badge(op.status)],
    ["Progress", opProgress],
    ["Started", op => when(op.started_at || op.created_at)],
    ["Error", op => op.error ? h("span", { class: "error", text: op.error }) : ""],
    ["", op => op.status === "failed" ? h("button", {
      type: "button", text: "Retry", "aria-label": `Retry ${op.kind} ${op.id}`,
      onclick: event => act(event.target, `Retry ${op.kind}`, () => api("POST", `/v1/operations/${op.id}/retry`)),
    }) : ["queued", "running"].includes(op.status) && isSuper() && !op.cancel_requested_at ? h("button", {
      type: "button", class: "secondary", text: "Cancel", "aria-label": `Cancel ${op.kind} ${op.id}`,
      onclick: event => act(event.target, `Cancel ${op.kind}`, () => api("POST", `/v1/operations/${op.id}/cancel`)),
    }) : ""],
  ], ops, "No operations.");
}

// ---------------------------------------------------------------- pages

async function tenantsPage(params, view) {
  const form = h("form", { class: "inline", role: "search", "aria-label": "Filter tenants" },
    h("label", { for: "q" }, "Search", h("input", { id: "q", name: "q", type: "search", value: params.q || "", placeholder: "id, name or domain" })),
    h("label", { for: "status" }, "Status", h("select", { id: "status", name: "status" },
      ["", "provisioning", "active", "suspended", "migrating", "restoring", "moving", "deleting", "deleted", "failed"]
        .map(s => h("option", { value: s, selected: s === (params.status || ""), text: s || "any" })))),
    h("label", { for: "server" }, "Server", h("input", { id: "server", name: "server", value: params.server || "" })),
    h("label", { for: "backup-stale" }, "Backup past its RPO",
      h("input", { id: "backup-stale", name: "backup_stale", type: "checkbox", value: "true", checked: params.backup_stale === "true" })),
    h("button", { type: "submit", text: "Filter" }));
  form.addEventListener("submit", event => {
    event.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    location.hash = `#/tenants${query(data)}`;
  });
  const page = Number(params.page || 1);
  const results = h("div", { id: "tenant-list" });
  view.replaceChildren(h("h2", { text: "Tenants" }), isSuper() ? createTenantForm() : null, form, results);
  live(results, async () => {
    const { data, total } = await api("GET", `/v1/tenants${query({ q: params.q, status: params.status, server: params.server, backup_stale: params.backup_stale, page, page_size: 50 })}`);
    const pages = Math.max(1, Math.ceil((total || 0) / 50));
    const go = n => { location.hash = `#/tenants${query({ ...params, page: n })}`; };
    return h("div", {},
      table("Tenants", [
        ["Tenant", t => h("a", { href: `#/tenants/${t.id}`, text: t.id })],
        ["Name", t => t.name],
        ["Status", t => badge(t.status)],
        ["Server", t => t.server || "-"],
        ["Revision", t => t.schema_revision || "-"],
        ["Last backup", t => backupAge(t.last_backup_at, t.rpo_hours)],
      ], data, "No tenant matches."),
      h("div", { class: "pager" }, `${total} tenants, page ${page} of ${pages}`,
        h("button", { type: "button", class: "secondary", disabled: page <= 1, text: "Previous", onclick: () => go(page - 1) }),
        h("button", { type: "button", class: "secondary", disabled: page >= pages, text: "Next", onclick: () => go(page + 1) })));
  });
}

function createTenantForm() {
  const form = h("form", { class: "inline", "aria-label": "Create a tenant" },
    h("label", { for: "new-id" }, "New tenant id", h("input", { id: "new-id", name: "id", required: true, pattern: "[a-z][a-z0-9-]{1,38}[a-z0-9]" })),
    h("label", { for: "new-name" }, "Name", h("input", { id: "new-name", name: "name", required: true })),
    h("label", { for: "new-email" }, "Admin email", h("input", { id: "new-email", name: "admin_email", type: "email", required: true })),
    h("button", { type: "submit", text: "Create tenant" }));
  form.addEventListener("submit", event => {
    event.preventDefault();
    const body = Object.fromEntries(new FormData(form));
    act(form.querySelector("button"), `Create ${body.id}`, () => api("POST", "/v1/tenants", body));
  });
  return form;
}

async function tenantPage(params, view, tenantId) {
  const { data: tenant } = await api("GET", `/v1/tenants/${tenantId}`);
  const path = `/v1/tenants/${tenantId}`;
  const actions = h("div", { class: "toolbar", role: "group", "aria-label": "Tenant actions" });
  const button = (text, onclick, cls) => h("button", { type: "button", class: cls || null, text, onclick });
  actions.append(button("Back up now", e => act(e.target, "Backup", () => api("POST", `${path}/backups`, {}))));
  if (isSuper() && tenant.status === "deleted") {
    // Within the grace period its database is kept: undelete brings the tenant back (409 says when it is too late).
    actions.append(button("Undelete", e => act(e.target, "Undelete", () => api("POST", `${path}/undelete`))));
    actions.append(button("Purge…", async e => {
      if (await confirmDialog(`Purge ${tenantId}?`,
        "This drops the kept database and the tenant's role now and destroys its backups (crypto-shredding). It cannot be undone.",
        "Purge tenant", { typed: tenantId })) act(e.target, "Purge", () => api("DELETE", `${path}?purge=true`));
    }, "danger"));
  } else if (isSuper()) {
    actions.append(button("Run drill", e => act(e.target, "Drill", () => api("POST", `${path}/drills`)), "secondary"));
    if (tenant.status === "suspended") actions.append(button("Resume", e => act(e.target, "Resume", () => api("POST", `${path}/resume`))));
    else actions.append(button("Suspend", e => act(e.target, "Suspend", () => api("POST", `${path}/suspend`)), "secondary"));
    const target = h("input", { id: "migrate-target", value: "head", size: 14 });
    actions.append(h("label", { for: "migrate-target" }, "Migration target", target),
      button("Migrate", e => act(e.target, "Migrate", () => api("POST", `${path}/migrate`, { target: target.value }))));
    const server = h("input", { id: "move-server", size: 10 });
    actions.append(h("label", { for: "move-server" }, "Move to server", server),
      button("Move", e => act(e.target, "Move", () => api("POST", `${path}/move`, { server: server.value }))));
    actions.append(button("Delete…", async e => {
      if (await confirmDialog(`Delete ${tenantId}?`,
        `This takes a final backup, then retires the database ${tenant.database} (kept for the grace period, ` +
        "when Undelete brings the tenant back; then dropped with the tenant's role).",
        "Delete tenant", { typed: tenantId })) act(e.target, "Delete", () => api("DELETE", path));
    }, "danger"));
  }
  const opsRegion = h("div", { id: "tenant-operations" });
  const backupsRegion = h("div", { id: "tenant-backups" });
  const drillsRegion = h("div", { id: "tenant-drills" });
  view.replaceChildren(
    h("h2", {}, `${tenant.name} `, badge(tenant.status)),
    h("dl", { class: "facts" }, [
      ["Tenant id", tenant.id], ["Database", tenant.database], ["Server", tenant.server || "-"],
      ["Schema revision", tenant.schema_revision || "-"], ["Plan", tenant.plan],
      ["Domains", (tenant.domains || []).join(", ") || "-"], ["Created", when(tenant.created_at)],
    ].flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })]),
      h("dt", { text: "Last backup" }), h("dd", {}, backupAge(tenant.last_backup_at, tenant.rpo_hours))),
    actions,
    h("h3", { text: "Operations" }), opsRegion,
    h("h3", { text: "Backups" }), backupsRegion,
    h("h3", { text: "Restore drills" }), drillsRegion);
  live(drillsRegion, async () => drillsTable((await api("GET", `${path}/drills?page_size=10`)).data));
  live(opsRegion, async () => operationsTable((await api("GET", `/v1/operations${query({ tenant_id: tenantId, page_size: 20 })}`)).data));
  live(backupsRegion, async () => {
    const { data: backups } = await api("GET", `${path}/backups?page_size=50`);
    return h("div", {}, backupChart(backups), table("Backups", [
      ["Backup", b => h("code", { text: b.id.slice(0, 8), title: b.id })],
      ["Status", b => badge(b.status)],
      ["Trigger", b => b.trigger],
      ["Completed", b => when(b.completed_at)],
      ["Stored", b => bytes(b.stored_bytes)],
      ["Revision", b => b.schema_revision || "-"],
      ["", b => b.status === "completed" ? h("button", {
        type: "button", text: "Restore…", "aria-label": `Restore backup ${b.id}`, onclick: e => restore(e.target, tenant, b),
      }) : ""],
    ], backups, "No backups yet."));
  });
}

async function restore(button, tenant, backup) {
  const newId = h("input", { id: "restore-new-id", placeholder: "leave empty to restore in place", autocomplete: "off" });
  const ok = await confirmDialog(`Restore ${tenant.id}?`,
    `In place, this replaces the current database ${tenant.database} of ${tenant.id} (revision ${tenant.schema_revision || "-"}) ` +
    `with backup ${backup.id.slice(0, 8)} of ${when(backup.completed_at)}; a safety backup is taken first. ` +
    "Give a new tenant id to restore as a new tenant instead (nothing is replaced).",
    "Restore", { extra: h("label", { for: "restore-new-id" }, "New tenant id (optional)", newId) });
  if (!ok) return;
  const body = newId.value ? { backup_id: backup.id, mode: "new_tenant", new_tenant_id: newId.value }
    : { backup_id: backup.id, mode: "in_place" };
  act(button, "Restore", () => api("POST", `/v1/tenants/${tenant.id}/restore`, body));
}

// Stored size of each completed backup, oldest to newest: growth and gaps at a glance.
function backupChart(backups) {
  const points = backups.filter(b => b.status === "completed" && b.stored_bytes).reverse().slice(-30);
  if (points.length < 1) return null;
  const width = 480, height = 120, max = Math.max(...points.map(b => b.stored_bytes));
  const barWidth = Math.min(40, width / points.length);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height + 14}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `Stored size of the last ${points.length} backups, largest ${bytes(max)}`);
  svg.setAttribute("width", width);
  points.forEach((b, i) => {
    const rect = document.createElementNS(ns, "rect");
    const barHeight = Math.max(2, (b.stored_bytes / max) * height);
    rect.setAttribute("x", i * barWidth + 2);
    rect.setAttribute("y", height - barHeight);
    rect.setAttribute("width", Math.max(2, barWidth - 4));
    rect.setAttribute("height", barHeight);
    const title = document.createElementNS(ns, "title");
    title.textContent = `${when(b.completed_at)}: ${bytes(b.stored_bytes)}`;
    rect.append(title);
    svg.append(rect);
  });
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", 2);
  label.setAttribute("y", height + 12);
  label.textContent = `backup sizes (max ${bytes(max)})`;
  svg.append(label);
  return h("figure", { class: "chart" }, svg);
}

async function operationsPage(params, view) {
  const region = h("div", { id: "operations" });
  const go = () => { location.hash = `#/operations${query({ status: status.value, kind: kind.value })}`; };
  const choice = (id, values, current) => h("select", { id, onchange: go },
    values.map(v => h("option", { value: v, selected: v === (current || ""), text: v || "any" })));
  const status = choice("op-status", ["", "queued", "running", "succeeded", "failed", "cancelled"], params.status);
  const kind = choice("op-kind", ["", "provision", "migrate", "backup", "restore", "move", "drill", "delete", "undelete"], params.kind);
  view.replaceChildren(h("h2", { text: "Operations" }),
    h("div", { class: "toolbar" }, h("label", { for: "op-status" }, "Status", status), h("label", { for: "op-kind" }, "Kind", kind)), region);
  live(region, async () => operationsTable((await api("GET", `/v1/operations${query({ status: params.status, kind: params.kind, page_size: 50 })}`)).data));
}

function seconds(value) {
  if (value === null || value === undefined) return "-";
  if (value >= 3600) return `${(value / 3600).toFixed(1)} h`;
  return value >= 60 ? `${Math.round(value / 60)} min` : `${value.toFixed(1)} s`;
}

function drillsTable(drills) {
  return table("Restore drills", [
    ["Tenant", d => h("a", { href: `#/tenants/${d.tenant_id}`, text: d.tenant_id })],
    ["Result", d => badge(d.result)],
    ["Finished", d => when(d.finished_at || d.started_at)],
    ["RPO achieved", d => seconds(d.rpo_seconds)],
    ["RTO achieved", d => seconds(d.rto_seconds)],
    ["Reason", d => d.reason ? h("span", { class: "error", text: d.reason }) : ""],
  ], drills, "No drills yet.");
}

async function drillsPage(params, view) {
  const region = h("div", { id: "drills" });
  const result = h("select", { id: "drill-result", onchange: () => { location.hash = `#/drills${query({ result: result.value })}`; } },
    ["", "running", "passed", "failed"].map(r => h("option", { value: r, selected: r === (params.result || ""), text: r || "any" })));
  view.replaceChildren(h("h2", { text: "Restore drills" }),
    h("div", { class: "toolbar" }, h("label", { for: "drill-result" }, "Result", result)), region);
  live(region, async () => drillsTable((await api("GET", `/v1/drills${query({ result: params.result, page_size: 50 })}`)).data));
}

async function serversPage(params, view) {
  const region = h("div", { id: "servers" });
  view.replaceChildren(h("h2", { text: "Database servers" }), region);
  live(region, async () => table("Servers", [
    ["Server", s => s.name],
    ["Address", s => `${s.host}:${s.port}`],
    ["Status", s => badge(s.status)],
    ["Load", s => s.max_tenants
      ? h("span", {}, h("meter", { min: 0, max: s.max_tenants, value: s.tenants, "aria-label": `${s.name} load` }), ` ${s.tenants} / ${s.max_tenants}`)
      : `${s.tenants} tenants (no limit)`],
  ], (await api("GET", "/v1/servers")).data, "No servers."));
}

function runCounts(run) {
  const c = run.counts || {};
  const done = (c.succeeded || 0) + (c.failed || 0) + (c.skipped || 0);
  const pct = c.total ? Math.round((100 * done) / c.total) : 0;
  return h("span", {}, progressBar(pct, `progress of run ${run.id}`), ` ${done}/${c.total || 0} (ok ${c.succeeded || 0}, failed ${c.failed || 0}, skipped ${c.skipped || 0})`);
}

function drainCounts(run) {
  const c = run.counts || {};
  const done = (c.moved || 0) + (c.failed || 0) + (c.skipped || 0);
  const pct = c.total ? Math.round((100 * done) / c.total) : 0;
  return h("span", {}, progressBar(pct, `progress of drain ${run.id}`), ` ${done}/${c.total || 0} (moved ${c.moved || 0}, moving ${c.moving || 0}, failed ${c.failed || 0})`);
}

async function runsPage(params, view) {
  const region = h("div", { id: "runs" });
  const drainsRegion = h("div", { id: "drain-runs" });
  view.replaceChildren(h("h2", { text: "Migration runs" }), region, h("h2", { text: "Server drains" }), drainsRegion);
  live(drainsRegion, async () => table("Server drains", [
    ["Run", r => h("a", { href: `#/drains/${r.id}`, text: r.id.slice(0, 8) })],
    ["Server", r => r.server],
    ["Status", r => badge(r.status)],
    ["Progress", drainCounts],
    ["Started", r => when(r.created_at)],
    ["Error", r => r.error ? h("span", { class: "error", text: r.error }) : ""],
  ], (await api("GET", "/v1/drain-runs?page_size=50")).data, "No drain runs."));
  live(region, async () => table("Migration runs", [
    ["Run", r => h("a", { href: `#/runs/${r.id}`, text: r.id.slice(0, 8) })],
    ["Target", r => r.target_revision || r.target],
    ["Status", r => badge(r.status)],
    ["Progress", runCounts],
    ["Started", r => when(r.started_at || r.created_at)],
    ["Error", r => r.error ? h("span", { class: "error", text: r.error }) : ""],
  ], (await api("GET", "/v1/migration-runs?page_size=50")).data, "No migration runs."));
}

async function runPage(params, view, runId) {
  const region = h("div", { id: "run" });
  view.replaceChildren(h("h2", { text: `Migration run ${runId.slice(0, 8)}` }), region);
  live(region, async () => {
    const { data } = await api("GET", `/v1/migration-runs/${runId}`);
    const run = data.run || data;
    return h("div", {}, h("p", {}, badge(run.status), " ", runCounts(run)),
      table("Run items", [
        ["Tenant", i => h("a", { href: `#/tenants/${i.tenant_id}`, text: i.tenant_id })],
        ["Status", i => badge(i.status)],
        ["From", i => i.from_revision || "-"], ["To", i => i.to_revision || "-"],
        ["Duration", i => i.duration_seconds === null || i.duration_seconds === undefined ? "-" : `${i.duration_seconds.toFixed(1)} s`],
        ["Error", i => i.error || i.skip_reason || ""],
      ], data.items || [], "No items."));
  });
}

async function drainPage(params, view, runId) {
  const region = h("div", { id: "drain" });
  view.replaceChildren(h("h2", { text: `Drain run ${runId.slice(0, 8)}` }), region);
  live(region, async () => {
    const { data: run } = await api("GET", `/v1/drain-runs/${runId}`);
    return h("div", {}, h("p", {}, `server ${run.server} `, badge(run.status), " ", drainCounts(run)),
      table("Drain items", [
        ["Tenant", i => h("a", { href: `#/tenants/${i.tenant_id}`, text: i.tenant_id })],
        ["Status", i => badge(i.status)],
        ["To", i => i.target_server || "-"],
        ["Move", i => i.operation_id ? h("code", { text: i.operation_id.slice(0, 8), title: i.operation_id }) : "-"],
        ["Error", i => i.error || ""],
      ], run.items || [], "No tenants."));
  });
}

const ROUTES = [
  [/^#\/tenants$/, tenantsPage],
  [/^#\/tenants\/([a-z0-9-]+)$/, tenantPage],
  [/^#\/operations$/, operationsPage],
  [/^#\/servers$/, serversPage],
  [/^#\/runs$/, runsPage],
  [/^#\/runs\/([A-Za-z0-9-]+)$/, runPage],
  [/^#\/drains\/([A-Za-z0-9-]+)$/, drainPage],
  [/^#\/drills$/, drillsPage],
];

// ---------------------------------------------------------------- navigation and sign-in

async function route() {
  const mine = ++generation;
  const view = document.getElementById("view");
  if (!sessionStorage.getItem(TOKEN_KEY)) return showSignIn();
  const [path, search] = (location.hash || "#/tenants").split("?");
  const params = Object.fromEntries(new URLSearchParams(search || ""));
  for (const link of document.querySelectorAll("nav a")) {
    link.toggleAttribute("aria-current", path.startsWith(link.getAttribute("href")));
    if (link.hasAttribute("aria-current")) link.setAttribute("aria-current", "page");
  }
  for (const [pattern, page] of ROUTES) {
    const match = pattern.exec(path);
    if (match) {
      // Rendered aside, shown only if no navigation happened meanwhile (a slow page must not win).
      const content = h("div");
      try {
        await page(params, content, ...match.slice(1).map(decodeURIComponent));
      } catch (error) {
        content.replaceChildren(h("p", { class: "error", role: "alert", text: error.message }));
      }
      if (mine === generation) view.replaceChildren(content);
      return;
    }
  }
  location.hash = "#/tenants";
}

function showSignIn() {
  document.getElementById("nav").hidden = true;
  document.getElementById("view").replaceChildren();
  document.getElementById("sign-in").hidden = false;
  document.getElementById("token").focus();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  me = null;
  flash(message || "Signed out.", Boolean(message));
  showSignIn();
}

async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    me = (await api("GET", "/v1/me")).data;
  } catch (error) {
    sessionStorage.removeItem(TOKEN_KEY);
    throw error;
  }
  document.getElementById("sign-in").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("who").textContent = me.role === "super_admin" ? `super admin (${me.name})` : `tenant admin of ${me.tenant_id}`;
  for (const link of document.querySelectorAll("[data-super]")) link.hidden = !isSuper();
  if (!isSuper() && !location.hash.startsWith(`#/tenants/${me.tenant_id}`)) location.hash = `#/tenants/${me.tenant_id}`;
  else route();
}

document.getElementById("sign-in").addEventListener("submit", async event => {
  event.preventDefault();
  const input = document.getElementById("token");
  const error = document.getElementById("sign-in-error");
  error.textContent = "";
  try {
    await signIn(input.value.trim());
    input.value = "";
  } catch (problem) {
    error.textContent = problem.status === 401 ? "This token is not valid." : problem.message;
  }
});
document.getElementById("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", () => { if (me) route(); });
if (sessionStorage.getItem(TOKEN_KEY)) signIn(sessionStorage.getItem(TOKEN_KEY)).catch(() => showSignIn());
else showSignIn();
