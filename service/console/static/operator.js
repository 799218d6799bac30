// Operator pages (admin keys): tenants (create, suspend, resume) and models with their queues.
import { call, metrics } from "./api.js";
import { $, el, fillTable, row, say, when } from "./dom.js";

const optional = (value) => (value === "" ? undefined : Number(value));
const limit = (value) => (value ?? "none");
// the limits form's fields and the tenant's fields they edit (PATCH /v1/admin/tenants/{tenant})
const LIMITS = [
  ["#limits-rps", "rate_limit_rps"],
  ["#limits-concurrency", "max_concurrency"],
  ["#limits-quota", "monthly_quota_inputs"],
  ["#limits-weight", "weight"],
];

const tenants = {
  setUp(failed) {
    tenants.failed = failed;
    $("#tenant-form").addEventListener("submit", (event) => {
      event.preventDefault();
      tenants.create().catch(failed);
    });
    $("#limits-tenant").addEventListener("change", () => tenants.fillLimits());
    $("#limits-form").addEventListener("submit", (event) => {
      event.preventDefault();
      tenants.saveLimits().catch(failed);
    });
  },
  async show() {
    const found = (await call("/v1/admin/tenants")).data;
    fillTable($("#tenants-table"), found.map((t) => {
      const suspended = t.status === "suspended";
      const action = suspended ? "resume" : "suspend";
      const button = el("button", {
        type: "button", "aria-label": `${suspended ? "Resume" : "Suspend"} tenant ${t.name}`,
        onclick: () => tenants.toggle(t.name, action).catch(tenants.failed),
      }, suspended ? "Resume" : "Suspend");
      return row(t.name, t.status, limit(t.rate_limit_rps), limit(t.max_concurrency),
        limit(t.monthly_quota_inputs), t.weight, when(t.created_at), el("td", {}, button));
    }), "No tenants.");
    tenants.found = found;
    const select = $("#limits-tenant");
    const chosen = select.value;
    select.replaceChildren(...found.map((t) => el("option", { value: t.name }, t.name)));
    if (found.some((t) => t.name === chosen)) select.value = chosen;
    tenants.fillLimits();
  },
  fillLimits() {
    const tenant = tenants.found.find((t) => t.name === $("#limits-tenant").value);
    if (!tenant) return;
    for (const [field, name] of LIMITS) $(field).value = tenant[name] ?? "";
  },
  async saveLimits() {
    const name = $("#limits-tenant").value;
    const body = Object.fromEntries(LIMITS.map(([field, key]) => [key, optional($(field).value) ?? null]));
    await call(`/v1/admin/tenants/${encodeURIComponent(name)}`, { method: "PATCH", json: body });
    await tenants.show();
    say(`Limits of ${name} saved.`);
  },
  async toggle(name, action) {
    await call(`/v1/admin/tenants/${encodeURIComponent(name)}/${action}`, { method: "POST" });
    await tenants.show();
    say(`Tenant ${name} ${action === "suspend" ? "suspended" : "resumed"}.`);
  },
  async create() {
    const body = { name: $("#tenant-name").value.trim() };
    const rps = optional($("#tenant-rps").value);
    const quota = optional($("#tenant-quota").value);
    if (rps !== undefined) body.rate_limit_rps = rps;
    if (quota !== undefined) body.monthly_quota_inputs = quota;
    const made = await call("/v1/admin/tenants", { method: "POST", json: body });
    $("#tenant-form").reset();
    await tenants.show();
    say(`Tenant ${made.name} created.`);
  },
};

const models = {
  setUp(failed) { $("#models-refresh").addEventListener("click", () => models.show().catch(failed)); },
  async show() {
    const [found, measured] = await Promise.all([call("/v1/models"), metrics()]);
    const byModel = (name) => Object.fromEntries((measured[name] || []).map((s) => [s.labels.model, s.value]));
    const depth = byModel("maas_queue_depth");
    const [inputs, batches] = [byModel("maas_batch_size_sum"), byModel("maas_batch_size_count")];
    fillTable($("#models-table"), found.data.map((m) => {
      const batching = m.batching ? `≤${m.batching.max_batch_size} per batch, ${m.batching.max_delay_ms} ms` : null;
      const status = m.reason ? `${m.status}: ${m.reason}` : m.status;
      const mean = batches[m.id] ? (inputs[m.id] / batches[m.id]).toFixed(2) : null;
      return row(m.id, m.task, status, m.devices.join(", ") || null, m.dtype, batching, depth[m.id] ?? null, mean);
    }), "No models.");
    fillTable($("#devices-table"), (measured.maas_device_memory_bytes || []).map((s) =>
      row(s.labels.device, `${(s.value / 2 ** 20).toFixed(0)} MiB`)), "No device reports its memory.");
  },
};

export const operatorPages = { tenants, models };
