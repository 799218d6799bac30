// Tenant pages: usage (chart, table, billing CSV), the playground, API keys, fine-tuning jobs.
import { call } from "./api.js";
import { rankedBars, stackedBars } from "./charts.js";
import { $, el, fillTable, number, row, say, when } from "./dom.js";

const DAY_MS = 86400000;
const money = (micro) => (micro / 1e6).toFixed(6);

// The selected period as [start, end) (end null: now) and the days it spans, in UTC.
function period(choice) {
  const now = new Date();
  const [y, m, d] = [now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate()];
  let start = new Date(Date.UTC(y, m, 1));
  let end = null;
  if (choice === "previous") [start, end] = [new Date(Date.UTC(y, m - 1, 1)), start];
  else if (choice !== "month") start = new Date(Date.UTC(y, m, d - Number(choice) + 1));
  const days = [];
  const last = end ? end.getTime() - DAY_MS : Date.UTC(y, m, d);
  for (let t = start.getTime(); t <= last; t += DAY_MS) days.push(new Date(t).toISOString().slice(0, 10));
  return { start, end, days };
}

const usage = {
  setUp(failed) {
    $("#usage-form").addEventListener("submit", (event) => {
      event.preventDefault();
      usage.show().catch(failed);
    });
    $("#usage-metric").addEventListener("change", () => usage.draw());
    $("#billing-csv").addEventListener("click", () => usage.download().catch(failed));
  },
  async show() {
    const { start, end, days } = period($("#usage-period").value);
    const query = new URLSearchParams({ group_by: "day,model", start: start.toISOString() });
    if (end) query.set("end", end.toISOString());
    usage.report = await call(`/v1/usage?${query}`);
    usage.days = days;
    const rows = usage.report.data;
    const sum = (field) => rows.reduce((total, r) => total + r[field], 0);
    $("#total-requests").textContent = number(sum("requests"));
    $("#total-inputs").textContent = number(sum("inputs"));
    $("#total-cost").textContent = usage.report.total_cost;
    fillTable($("#usage-table"), rows.map((r) =>
      row(r.day, r.model, r.kind, number(r.requests), number(r.inputs), r.cost)), "No usage in this period.");
    usage.draw();
  },
  draw() {
    if (!usage.report) return;
    const metric = $("#usage-metric").value;
    const names = [...new Set(usage.report.data.map((r) => `${r.model} (${r.kind})`))].sort();
    const series = names.map((name) => ({
      name,
      values: usage.days.map((day) => usage.report.data
        .filter((r) => r.day === day && `${r.model} (${r.kind})` === name)
        .reduce((total, r) => total + r[metric], 0)),
    }));
    const format = metric === "cost_micro" ? money : (v) => number(Math.round(v * 100) / 100);
    const what = $("#usage-metric").selectedOptions[0].textContent;
    stackedBars($("#usage-chart"), { categories: usage.days, series, format, label: `${what} per day and model` });
    $("#usage-caption").textContent = `${what} per day (UTC), stacked by model; hover a bar for its value.`;
  },
  async download() {
    const month = period($("#usage-period").value).start.toISOString().slice(0, 7);
    const response = await call(`/v1/admin/billing/export?period=${month}&format=csv`, { raw: true });
    const link = el("a", { href: URL.createObjectURL(await response.blob()), download: `maas-billing-${month}.csv` });
    document.body.append(link);
    link.click();
    link.remove();
    URL.revokeObjectURL(link.href);
    say(`Billing export for ${month} downloaded.`);
  },
};

const ZERO_SHOT = "zero-shot-image-classification";
const TEXT_TASKS = new Set(["text-classification", "token-classification", "feature-extraction"]);

function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  a.forEach((x, i) => { dot += x * b[i]; na += x * x; nb += b[i] * b[i]; });
  return dot / Math.sqrt(na * nb);
}

const playground = {
  setUp(failed) {
    $("#play-model").addEventListener("change", () => playground.pick());
    $("#play-file").addEventListener("change", () => playground.preview($("#play-file").files[0]));
    const zone = $("#drop-zone");
    zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      $("#play-file").files = event.dataTransfer.files;
      playground.preview(event.dataTransfer.files[0]);
    });
    $("#playground-form").addEventListener("submit", (event) => {
      event.preventDefault();
      playground.run().catch(failed);
    });
  },
  async show() {
    const models = (await call("/v1/models")).data;
    const select = $("#play-model");
    const chosen = select.value;
    select.replaceChildren(...models.map((m) => el("option", { value: m.id, "data-task": m.task }, `${m.id} · ${m.task} · ${m.status}`)));
    if (models.some((m) => m.id === chosen)) select.value = chosen;
    playground.pick();
  },
  task: () => $("#play-model").selectedOptions[0]?.dataset.task || "",
  pick() {
    const text = TEXT_TASKS.has(playground.task());
    $("#play-text-input").hidden = !text;
    $("#play-image-input").hidden = text;
    $("#play-labels-input").hidden = playground.task() !== ZERO_SHOT;
  },
  preview(file) {
    const image = $("#play-preview");
    if (image.src) URL.revokeObjectURL(image.src);
    image.hidden = !file;
    if (file) image.src = URL.createObjectURL(file);
  },
  async run() {
    const model = $("#play-model").value;
    const path = `/v1/models/${encodeURIComponent(model)}/predict?top_k=${Number($("#play-top-k").value) || 5}`;
    let request;
    if (TEXT_TASKS.has(playground.task())) {
      const inputs = $("#play-text").value.split("\n").map((t) => t.trim()).filter(Boolean);
      if (!inputs.length) throw new Error("Type a text first.");
      request = { method: "POST", json: { inputs } };
    } else {
      const file = $("#play-file").files[0];
      if (!file) throw new Error("Choose an image first.");
      request = { method: "POST", body: file, contentType: file.type };
      if (playground.task() === ZERO_SHOT) {  // the labels travel as form fields beside the image
        const form = new FormData();
        form.append("file", file);
        for (const label of $("#play-labels").value.split(",").map((l) => l.trim()).filter(Boolean)) {
          form.append("candidate_labels", label);
        }
        request = { method: "POST", body: form };
      }
    }
    say(`Running ${model}…`);
    const began = performance.now();
    const answer = await call(path, request);
    const latency = performance.now() - began;
    const usage = answer.usage;
    const parts = [`Latency ${latency.toFixed(0)} ms`];
    if (usage.compute_ms != null) parts.push(`compute ${usage.compute_ms} ms`);
    if (usage.cost != null) parts.push(`cost ${usage.cost}`);
    $("#play-meta").textContent = parts.join(" · ");
    const raw = $("#play-raw");
    raw.hidden = true;
    $("#play-chart").replaceChildren();
    if (answer.predictions) {
      const items = answer.predictions[0].map((p) => ({ label: p.label, value: p.score }));
      rankedBars($("#play-chart"), items, `Top ${items.length} answers of ${model}`);
    } else if (answer.embeddings) {
      const [first, second] = answer.embeddings;
      const lines = [`${first.length} dimensions; first values: ${first.slice(0, 8).map((v) => v.toFixed(4)).join(", ")}`];
      if (second) lines.push(`cosine similarity of the first two texts: ${cosine(first, second).toFixed(4)}`);
      raw.textContent = lines.join("\n");
      raw.hidden = false;
    } else {
      raw.textContent = JSON.stringify(answer.entities || answer.detections, null, 2);
      raw.hidden = false;
    }
    say(`${model} answered.`);
  },
};

const keys = {
  setUp(failed) {
    $("#keys-tenant").addEventListener("change", () => keys.list().catch(failed));
    $("#key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      keys.create().catch(failed);
    });
    $("#new-key-done").addEventListener("click", () => keys.reveal(null));
    keys.failed = failed;
  },
  async show(identity) {
    const tenants = (await call("/v1/admin/tenants")).data;
    const select = $("#keys-tenant");
    const chosen = select.value || identity.tenant;
    select.replaceChildren(...tenants.map((t) => el("option", { value: t.name }, t.name)));
    select.value = tenants.some((t) => t.name === chosen) ? chosen : tenants[0]?.name;
    keys.reveal(null);
    await keys.list();
  },
  tenant: () => encodeURIComponent($("#keys-tenant").value),
  async list() {
    const found = (await call(`/v1/admin/tenants/${keys.tenant()}/keys`)).data;
    fillTable($("#keys-table"), found.map((k) => {
      const name = k.name || k.id;
      const state = k.revoked_at ? `revoked ${when(k.revoked_at)}` : k.expires_at ? `expires ${when(k.expires_at)}` : "active";
      const act = (label, action) => el("button", {
        type: "button", "aria-label": `${label} key ${name}`, disabled: !!k.revoked_at,
        onclick: () => action(k).catch(keys.failed),
      }, label);
      return row(k.name, k.id, k.prefix, k.scopes.join(", "), k.models ? k.models.join(", ") : "all",
        when(k.last_used_at), state, el("td", {}, act("Revoke", keys.revoke), " ", act("Rotate", keys.rotate)));
    }), "No keys yet.");
  },
  reveal(key) {
    $("#new-key").hidden = !key;
    $("#new-key-value").textContent = key || "";
    if (key) $("#new-key-done").focus();
  },
  async create() {
    const body = { scopes: [...document.querySelectorAll("#key-form input[type=checkbox]:checked")].map((c) => c.value) };
    const name = $("#key-name").value.trim();
    const models = $("#key-models").value.split(",").map((m) => m.trim()).filter(Boolean);
    if (name) body.name = name;
    if (models.length) body.models = models;
    const made = await call(`/v1/admin/tenants/${keys.tenant()}/keys`, { method: "POST", json: body });
    $("#key-name").value = "";
    await keys.list();
    keys.reveal(made.key);
    say(`Key ${made.id} created.`);
  },
  async revoke(key) {
    await call(`/v1/admin/keys/${encodeURIComponent(key.id)}`, { method: "DELETE" });
    await keys.list();
    say(`Key ${key.id} revoked.`);
  },
  async rotate(key) {
    const made = await call(`/v1/admin/keys/${encodeURIComponent(key.id)}/rotate`, { method: "POST", json: {} });
    await keys.list();
    keys.reveal(made.key);
    say(`Key ${key.id} rotated: the new key is ${made.id}.`);
  },
};

export const tenantPages = { usage, playground, keys };
