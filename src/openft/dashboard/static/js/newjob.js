// New job: files (pick or upload, with the server's line-numbered
// validation errors), model, method, hyperparameters, suffix, seed, metadata.

import { api, upload } from "./api.js";
import { alertBox, bytes, clear, duration, explain, h } from "./util.js";

const COMMON = [
  ["n_epochs", "Epochs", "integer"],
  ["batch_size", "Batch size", "integer"],
  ["learning_rate_multiplier", "Learning rate multiplier", "number"],
];
const BY_METHOD = {
  supervised: [],
  dpo: [["beta", "Beta (DPO)", "number"]],
  reinforcement: [
    ["compute_multiplier", "Compute multiplier", "number"],
    ["eval_interval", "Eval interval", "integer"],
    ["eval_samples", "Eval samples", "integer"],
    ["reasoning_effort", "Reasoning effort", ["default", "low", "medium", "high"]],
  ],
};
// openft's documented extensions (README, "Hyperparameters"): blank means the server's default.
const EXTENSIONS = {
  supervised: [
    ["training_type", "Training type", ["", "lora", "full"]],
    ["lora_rank", "LoRA rank", "integer"], ["lora_alpha", "LoRA alpha", "number"],
    ["lora_dropout", "LoRA dropout", "number"], ["max_seq_length", "Max sequence length", "integer"],
    ["warmup_ratio", "Warm-up ratio", "number"], ["early_stopping_patience", "Early-stopping patience", "integer"],
    ["fine_tuned_model_from", "Model from", ["", "last", "best_valid_loss"]],
  ],
};
EXTENSIONS.dpo = [...EXTENSIONS.supervised, ["rpo_alpha", "RPO alpha", "number"]];
EXTENSIONS.reinforcement = [
  ...EXTENSIONS.supervised.filter(([name]) => !["early_stopping_patience", "fine_tuned_model_from"].includes(name)),
  ["beta", "KL beta", "number"], ["max_completion_tokens", "Max completion tokens", "integer"],
];

function field([name, label, kind], prefix) {
  const id = `${prefix}-${name}`;
  const control = Array.isArray(kind)
    ? h("select", { id, name }, kind.map((v) => h("option", { value: v, text: v || "default" })))
    : h("input", { id, name, type: "text", inputmode: kind === "integer" ? "numeric" : "decimal", placeholder: prefix === "ext" ? "default" : "auto", autocomplete: "off" });
  control.dataset.kind = Array.isArray(kind) ? "choice" : kind;
  return h("div", { class: "field" }, h("label", { for: id, text: label }), control);
}

function readValue(control) {
  const raw = control.value.trim();
  if (raw === "" || raw === "auto") return raw === "auto" ? "auto" : undefined;
  if (control.dataset.kind === "choice") return raw;
  const value = Number(raw);
  if (!isFinite(value) || (control.dataset.kind === "integer" && !Number.isInteger(value))) {
    throw Object.assign(new Error(`${control.labels[0].textContent} must be ${control.dataset.kind === "integer" ? "a whole number" : "a number"} or auto.`), { control });
  }
  return value;
}

export async function newJobPage(main, params, signal) {
  const notice = h("div", { "aria-live": "polite" });
  clear(main, h("h1", { text: "New fine-tuning job" }), h("p", { class: "muted", role: "status", text: "Loading files and models…" }));
  let files;
  let models;
  try {
    [files, models] = await Promise.all([
      api("/files?purpose=fine-tune&limit=1000", { signal }), api("/models", { signal }),
    ]);
  } catch (error) {
    clear(main, h("h1", { text: "New fine-tuning job" }), alertBox(error));
    return;
  }
  const fileOptions = (select, optional) => {
    const current = select.value;
    clear(select, optional ? h("option", { value: "", text: "None" }) : h("option", { value: "", text: "Choose a file…" }),
      files.data.map((f) => h("option", { value: f.id, text: `${f.filename} (${f.id}, ${bytes(f.bytes)})` })));
    select.value = current;
  };
  const training = h("select", { id: "training-file", name: "training_file", required: true, dataset: { param: "training_file" } });
  const validation = h("select", { id: "validation-file", name: "validation_file", dataset: { param: "validation_file" } });
  fileOptions(training, false);
  fileOptions(validation, true);

  const uploader = h("input", { id: "upload-training", type: "file", accept: ".jsonl,application/jsonl,application/json" });
  const progress = h("progress", { id: "upload-progress", max: 1, value: 0, hidden: true, "aria-label": "Upload progress" });
  const uploadNotice = h("div", { class: "upload-notice", "aria-live": "polite" });
  uploader.addEventListener("change", async () => {
    const file = uploader.files[0];
    if (!file) return;
    clear(uploadNotice, h("span", { role: "status", text: `Uploading and checking ${file.name}…` }));
    progress.hidden = false;
    progress.value = 0;
    try {
      const created = await upload(file, "fine-tune", (fraction) => { progress.value = fraction; });
      files.data.unshift(created);
      fileOptions(training, false);
      fileOptions(validation, true);
      training.value = created.id;
      clear(uploadNotice, h("p", { class: "ok", role: "status", text: `Uploaded ${created.filename} as ${created.id}; it is selected as the training file.` }));
    } catch (error) {
      clear(uploadNotice, h("p", { class: "alert", role: "alert", text: `${file.name} was not accepted: ${explain(error)}` }));
    } finally {
      progress.hidden = true;
      uploader.value = "";
    }
  });

  const model = h("select", { id: "model", name: "model", required: true, dataset: { param: "model" } },
    models.data.map((m) => h("option", { value: m.id, text: m.owned_by && m.id.startsWith("ft:") ? `${m.id} (fine-tuned)` : m.id })));
  const methodInputs = ["supervised", "dpo", "reinforcement"].map((m) =>
    h("label", { class: "choice" }, h("input", { type: "radio", name: "method", value: m, checked: m === "supervised" }),
      { supervised: "Supervised", dpo: "DPO (preferences)", reinforcement: "Reinforcement (grader)" }[m]));
  const hyper = h("fieldset", { class: "grid" });
  const extensions = h("div", { class: "grid" });
  const grader = h("textarea", { id: "grader", name: "grader", rows: 6, dataset: { param: "method.reinforcement.grader" },
    placeholder: '{"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "eq"}' });
  const graderField = h("div", { class: "field wide", hidden: true }, h("label", { for: "grader", text: "Grader (JSON)" }), grader);
  const suffix = h("input", { id: "suffix", name: "suffix", maxlength: 64, autocomplete: "off", dataset: { param: "suffix" } });
  const seed = h("input", { id: "seed", name: "seed", inputmode: "numeric", placeholder: "random", autocomplete: "off", dataset: { param: "seed" } });
  const metadata = h("textarea", { id: "metadata", name: "metadata", rows: 3, placeholder: "team=search\nticket=ML-42", dataset: { param: "metadata" } });

  const method = () => methodInputs.map((label) => label.querySelector("input")).find((input) => input.checked).value;
  function showMethod() {
    const m = method();
    clear(hyper, h("legend", { text: "Hyperparameters (blank = auto)" }), [...COMMON, ...BY_METHOD[m]].map((f) => field(f, "hp")));
    clear(extensions, EXTENSIONS[m].map((f) => field(f, "ext")));
    graderField.hidden = m !== "reinforcement";
  }
  for (const label of methodInputs) label.querySelector("input").addEventListener("change", showMethod);

  function body() {
    const m = method();
    const hyperparameters = {};
    for (const control of [...hyper.querySelectorAll("input, select"), ...extensions.querySelectorAll("input, select")]) {
      control.dataset.param = `method.${m}.hyperparameters.${control.name}`;
      const value = readValue(control);
      if (value !== undefined) hyperparameters[control.name] = value;
    }
    const request = { model: model.value, training_file: training.value, method: { type: m, [m]: { hyperparameters } } };
    if (m === "reinforcement") {
      try { request.method.reinforcement.grader = JSON.parse(grader.value); } catch (error) {
        throw Object.assign(new Error(`The grader is not valid JSON: ${error.message}`), { control: grader });
      }
    }
    if (validation.value) request.validation_file = validation.value;
    if (suffix.value.trim()) request.suffix = suffix.value.trim();
    if (seed.value.trim()) {
      const value = Number(seed.value);
      if (!Number.isInteger(value)) throw Object.assign(new Error("The seed must be a whole number."), { control: seed });
      request.seed = value;
    }
    const pairs = metadata.value.split("\n").map((line) => line.trim()).filter(Boolean);
    if (pairs.length) {
      request.metadata = {};
      pairs.forEach((line, index) => {
        const at = line.indexOf("=");
        if (at < 1) throw Object.assign(new Error(`Metadata line ${index + 1} must be key=value.`), { control: metadata });
        request.metadata[line.slice(0, at).trim()] = line.slice(at + 1).trim();
      });
    }
    return request;
  }

  function markInvalid(control, text) {
    for (const marked of main.querySelectorAll("[aria-invalid]")) marked.removeAttribute("aria-invalid");
    clear(notice, alertBox(text));
    if (control) { control.setAttribute("aria-invalid", "true"); control.focus(); }
  }

  function controlFor(param) {
    if (!param) return null;
    const all = [...main.querySelectorAll("[data-param]")];
    return all.find((c) => c.dataset.param === param) || all.find((c) => param.startsWith(c.dataset.param))
      || all.find((c) => c.dataset.param.endsWith(`.${param.split(".").at(-1)}`)) || null;
  }

  async function send(path) {
    let request;
    try { request = body(); } catch (error) { markInvalid(error.control, error.message); return null; }
    clear(notice, h("p", { role: "status", text: path.endsWith("estimate") ? "Estimating (the first estimate for a model measures it)…" : "Creating the job…" }));
    try {
      return await api(path, { method: "POST", body: request, signal });
    } catch (error) {
      markInvalid(controlFor(error.param), explain(error));
      return null;
    }
  }

  const form = h("form", { class: "new-job", novalidate: true },
    h("fieldset", {}, h("legend", { text: "Data" }),
      h("div", { class: "field" }, h("label", { for: "training-file", text: "Training file" }), training),
      h("div", { class: "field" }, h("label", { for: "upload-training", text: "…or upload a JSONL file" }), uploader, progress, uploadNotice),
      h("div", { class: "field" }, h("label", { for: "validation-file", text: "Validation file (optional)" }), validation)),
    h("fieldset", {}, h("legend", { text: "Model and method" }),
      h("div", { class: "field" }, h("label", { for: "model", text: "Base model" }), model),
      h("div", { class: "choices", role: "radiogroup", "aria-label": "Method" }, methodInputs),
      graderField),
    hyper,
    h("details", {}, h("summary", { text: "openft extensions (LoRA, sequence length, early stopping…)" }), extensions),
    h("fieldset", { class: "grid" }, h("legend", { text: "Naming" }),
      h("div", { class: "field" }, h("label", { for: "suffix", text: "Suffix" }), suffix),
      h("div", { class: "field" }, h("label", { for: "seed", text: "Seed" }), seed),
      h("div", { class: "field wide" }, h("label", { for: "metadata", text: "Metadata (key=value per line)" }), metadata)),
    notice,
    h("div", { class: "actions" },
      h("button", { type: "button", text: "Estimate", onclick: async () => {
        const estimate = await send("/fine_tuning/jobs/estimate");
        if (!estimate) return;
        clear(notice, h("p", { role: "status", class: "ok" },
          estimate.estimated_duration_seconds === null ? "Duration not estimated · " : `About ${duration(estimate.estimated_duration_seconds)} · `,
          `${estimate.total_steps} steps`,
          estimate.trained_tokens === null ? "" : ` · ${estimate.trained_tokens.toLocaleString()} trained tokens`,
          (estimate.warnings || []).map((w) => h("span", { class: "warn", text: ` · ${w.message || w.code}` }))));
      } }),
      h("button", { type: "submit", class: "primary", text: "Create job" })));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const job = await send("/fine_tuning/jobs");
    if (job) location.hash = `#/jobs/${job.id}`;
  });
  clear(main, h("h1", { text: "New fine-tuning job" }), form);
  showMethod();
  const wanted = params.get("model");
  if (wanted) model.value = wanted;
}
