// Fine-tuning: upload a dataset zip, start a job with its hyperparameters, watch it (its status,
// progress and events) until it ends; the resulting model then appears in the playground.
import { call } from "./api.js";
import { $, el, fillTable, row, say, when } from "./dom.js";

const ACTIVE = new Set(["queued", "running"]);
const POLL_MS = 1000;

const jobs = {
  setUp(failed) {
    jobs.failed = failed;
    $("#jobs-refresh").addEventListener("click", () => jobs.show().catch(failed));
    $("#job-form").addEventListener("submit", (event) => {
      event.preventDefault();
      jobs.start().catch(failed);
    });
  },
  async show() {
    const models = (await call("/v1/models")).data.filter((m) => m.task === "image-classification" && m.owned_by === "system");
    const select = $("#job-base");
    const chosen = select.value;
    select.replaceChildren(...models.map((m) => el("option", { value: m.id }, m.id)));
    if (models.some((m) => m.id === chosen)) select.value = chosen;
    await jobs.refresh();
  },
  async refresh() {
    clearTimeout(jobs.timer);
    const found = (await call("/v1/fine-tunes")).data;
    fillTable($("#jobs-table"), found.map((j) => row(j.id, j.base_model, j.status,
      `${j.progress.steps_done}/${j.progress.steps_total ?? "?"} steps, epoch ${j.progress.epochs_done}/${j.progress.epochs_total ?? "?"}`,
      j.fine_tuned_model ?? j.error, when(j.created_at))), "No fine-tuning jobs.");
    const watched = found.find((j) => j.id === jobs.watching) || found[0];
    if (watched) await jobs.events(watched);
    // poll while a job is queued or running and this page is open (the API has no push)
    if (found.some((j) => ACTIVE.has(j.status)) && !$("#jobs").hidden) {
      jobs.timer = setTimeout(() => jobs.refresh().catch(jobs.failed), POLL_MS);
    }
  },
  async events(job) {
    const found = (await call(`/v1/fine-tunes/${encodeURIComponent(job.id)}/events`)).data;
    $("#job-events-title").textContent = `Events of ${job.id} (${job.status})`;
    $("#job-events").replaceChildren(...found.map((e) => el("li", {}, `${when(e.created_at)} ${e.level}: ${e.message}`)));
  },
  async start() {
    const file = $("#job-file").files[0];
    if (!file) throw new Error("Choose a dataset zip first.");
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", file);
    say(`Uploading ${file.name}…`);
    const uploaded = await call("/v1/files", { method: "POST", body: form });
    const body = {
      base_model: $("#job-base").value,
      training_file: uploaded.id,
      hyperparameters: {
        epochs: Number($("#job-epochs").value),
        learning_rate: Number($("#job-lr").value),
        batch_size: Number($("#job-batch").value),
      },
    };
    const suffix = $("#job-suffix").value.trim();
    if (suffix) body.suffix = suffix;
    const job = await call("/v1/fine-tunes", { method: "POST", json: body });
    jobs.watching = job.id;
    say(`Job ${job.id} started.`);
    await jobs.refresh();
  },
};

export const trainingPages = { jobs };
