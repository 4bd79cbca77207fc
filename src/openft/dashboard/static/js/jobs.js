// Jobs: the paginated list (filters by status and metadata) and the live
// job page (charts, events, checkpoints, actions).

import { api, apiRouted, download, query } from "./api.js";
import { lineChart } from "./chart.js";
import { jobEvalRuns } from "./evals.js";
import {
  TERMINAL, alertBox, clear, confirmAction, duration, explain, h, number, pause, statusBadge, tableHead, when,
} from "./util.js";

const STATUSES = ["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"];
const POLL_MS = 1000;

// The list's filters and page survive a visit to a job and back.
const listState = { status: "", metaKey: "", metaValue: "", limit: 20, provider: "", cursors: [null] };

/** Step and total of the newest metrics event (running and paused jobs). */
async function progressOf(job, signal, provider) {
  const events = await api(`/fine_tuning/jobs/${job.id}/events?limit=20`, { signal, provider });
  const latest = events.data.find((e) => e.type === "metrics" && e.data.total_steps);
  return latest ? { step: latest.data.step, total: latest.data.total_steps } : null;
}

function timeLeft(job) {
  if (!job.estimated_finish || job.status !== "running") return null;
  return duration(job.estimated_finish - Date.now() / 1000);
}

export async function jobsPage(main, params, signal) {
  const state = listState;
  const statusSelect = h("select", { id: "filter-status", name: "status" },
    h("option", { value: "", text: "Any status" }),
    STATUSES.map((s) => h("option", { value: s, text: s.replace("_", " ") })));
  statusSelect.value = state.status;
  const metaKey = h("input", { id: "filter-meta-key", name: "meta-key", value: state.metaKey, autocomplete: "off" });
  const metaValue = h("input", { id: "filter-meta-value", name: "meta-value", value: state.metaValue, autocomplete: "off" });
  const limit = h("select", { id: "page-size", name: "limit" }, [20, 50, 100].map((n) => h("option", { value: n, text: n })));
  limit.value = String(state.limit);
  // Jobs on the provider accounts this organisation may route to (the gateway), beside its own.
  const accounts = (await api("/me", { signal })).providers.filter((p) => p.kind !== "openft");
  if (!accounts.some((p) => p.name === state.provider)) state.provider = "";
  const providerSelect = h("select", { id: "filter-provider", name: "provider" },
    h("option", { value: "", text: "This deployment" }), accounts.map((p) => h("option", { value: p.name, text: p.name })));
  providerSelect.value = state.provider;
  const form = h("form", { class: "filters", "aria-label": "Filter jobs" },
    accounts.length > 0 && h("label", { for: "filter-provider", text: "Provider account" }), accounts.length > 0 && providerSelect,
    h("label", { for: "filter-status", text: "Status" }), statusSelect,
    h("label", { for: "filter-meta-key", text: "Metadata key" }), metaKey,
    h("label", { for: "filter-meta-value", text: "value" }), metaValue,
    h("label", { for: "page-size", text: "Per page" }), limit,
    h("button", { type: "submit", text: "Apply" }));
  const body = h("div", { class: "table-wrap" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  clear(main,
    h("div", { class: "page-head" }, h("h1", { text: "Fine-tuning jobs" }), h("a", { class: "button primary", href: "#/new", text: "New job" })),
    form, body, pager);

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    Object.assign(state, {
      status: statusSelect.value, metaKey: metaKey.value.trim(), metaValue: metaValue.value, limit: Number(limit.value),
      provider: providerSelect.value, cursors: [null],
    });
    load();
  });

  async function load() {
    const after = state.cursors.at(-1);
    const filters = { limit: state.limit, after, status: state.status };
    if (state.metaKey) filters[`metadata[${state.metaKey}]`] = state.metaValue;
    clear(body, h("p", { class: "muted", role: "status", text: "Loading jobs…" }));
    let page;
    try {
      page = await api(`/fine_tuning/jobs${query(filters)}`, { signal, provider: state.provider });
    } catch (error) {
      clear(body, alertBox(error));
      return;
    }
    renderPage(page);
  }

  function renderPage(page) {
    if (page.data.length === 0) {
      const filtered = state.status || state.metaKey;
      clear(body, h("p", { class: "empty" }, filtered ? "No jobs match these filters." : "No jobs yet. ",
        filtered ? null : h("a", { href: "#/new", text: "Create your first fine-tuning job." })));
    } else {
      const rows = page.data.map((job) => {
        const progress = h("td", { class: "progress-cell", dataset: { job: job.id } },
          job.status === "succeeded" && job.trained_tokens ? `${job.trained_tokens.toLocaleString()} tokens` : "—");
        return { job, progress, row: h("tr", {},
          h("td", {}, h("a", { href: `#/jobs/${job.id}${state.provider ? query({ provider: state.provider }) : ""}`, text: job.id })),
          h("td", {}, statusBadge(job.status)),
          h("td", { class: "model", text: job.fine_tuned_model || job.model }),
          h("td", { text: job.user_provided_suffix || "—" }),
          h("td", {}, when(job.created_at)),
          progress) };
      });
      clear(body, h("table", { class: "jobs" },
        h("caption", { class: "visually-hidden", text: `Fine-tuning jobs${state.provider ? ` on ${state.provider}` : ""}, newest first` }),
        tableHead(["Job", "Status", "Model", "Suffix", "Created", "Progress"]),
        h("tbody", {}, rows.map((r) => r.row))));
      performance.mark("openft:jobs-rendered");
      for (const { job, progress } of rows) {
        if (job.status !== "running" && job.status !== "paused") continue;
        progressOf(job, signal, state.provider).then((p) => {
          const left = timeLeft(job);
          clear(progress, p ? `step ${p.step}/${p.total}` : "starting", left ? ` · ${left} left` : "");
        }).catch(() => {});
      }
    }
    const number = state.cursors.length;
    clear(pager,
      h("button", { type: "button", disabled: number === 1, text: "Previous", onclick: () => { state.cursors.pop(); load(); } }),
      h("span", { text: `Page ${number}` }),
      h("button", { type: "button", disabled: !page.has_more, text: "Next",
        onclick: () => { state.cursors.push(page.data.at(-1).id); load(); } }));
  }

  await load();
}

// ---------------------------------------------------------------- job page

const CHARTS = [
  ["Loss", (key) => key.endsWith("loss")],
  ["Token accuracy", (key) => key.endsWith("accuracy")],
  ["Reward", (key) => key.includes("reward") || key.includes("score")],
  ["Eval pass rate", (key) => key === "eval_pass_rate"],
];
const LABELS = {
  train_loss: "training loss", valid_loss: "validation loss", full_valid_loss: "full validation loss",
  train_mean_token_accuracy: "training accuracy", valid_mean_token_accuracy: "validation accuracy",
  full_valid_mean_token_accuracy: "full validation accuracy", eval_pass_rate: "eval pass rate",
};

function series(metrics, checkpoints, test) {
  const byKey = new Map();
  for (const m of metrics) {
    for (const [key, value] of Object.entries(m)) {
      if (key === "step" || key === "total_steps" || typeof value !== "number" || !test(key)) continue;
      if (!byKey.has(key)) byKey.set(key, []);
      byKey.get(key).push([m.step, value]);
    }
  }
  for (const c of [...checkpoints].reverse()) {
    for (const [key, value] of Object.entries(c.metrics)) {
      if (!key.startsWith("full_") || !test(key)) continue;
      if (!byKey.has(key)) byKey.set(key, []);
      byKey.get(key).push([c.step_number, value]);
    }
  }
  return [...byKey].map(([name, points]) => ({ name, label: LABELS[name] || name.replaceAll("_", " "), points }));
}

function definitionList(entries) {
  return h("dl", { class: "facts" }, entries.filter(([, v]) => v !== undefined).map(([term, value]) => [
    h("dt", { text: term }), h("dd", {}, value === null || value === "" ? h("span", { class: "muted", text: "—" }) : value),
  ]));
}

function fileLink(fileId, label, provider) {
  if (!fileId) return null;
  return h("span", {}, h("code", { text: fileId }), " ",
    h("button", { type: "button", class: "link", text: `Download ${label}`,
      onclick: (event) => download(`/files/${fileId}/content`, `${fileId}.jsonl`, provider)
        .catch((error) => event.target.after(alertBox(error))) }));
}

export async function jobPage(main, jobId, signal, params) {
  // Opened from a provider account's list: every call names the account (an id seen only
  // in a list is not remembered by the gateway).
  const provider = params?.get("provider") || undefined;
  const events = [];
  const seen = new Set();
  let checkpoints = [];
  let evalRuns = [];
  let job;
  let account = null; // the provider account the job lives on, when the gateway routes it
  const parts = {
    head: h("div", { class: "page-head" }),
    actions: h("div", { class: "actions", role: "group", "aria-label": "Job actions" }),
    notice: h("div", { "aria-live": "polite" }),
    facts: h("section", { "aria-labelledby": "facts-h" }),
    charts: h("section", { class: "charts", "aria-label": "Metrics" }),
    checkpoints: h("section", { "aria-labelledby": "checkpoints-h" }),
    evals: h("section", { "aria-labelledby": "evals-h" }),
    hyper: h("section", { "aria-labelledby": "hyper-h" }),
    events: h("section", { "aria-labelledby": "events-h" }),
  };
  clear(main, h("p", { class: "muted", role: "status", text: "Loading job…" }));

  async function fetchNewEvents() {
    const fresh = [];
    let after = null;
    for (;;) {
      const page = await api(`/fine_tuning/jobs/${jobId}/events${query({ limit: 100, after })}`, { signal, provider });
      let reachedSeen = false;
      for (const event of page.data) {
        if (seen.has(event.id)) { reachedSeen = true; break; }
        fresh.push(event);
      }
      if (reachedSeen || !page.has_more || page.data.length === 0) break;
      after = page.data.at(-1).id;
    }
    for (const event of fresh.reverse()) { seen.add(event.id); events.push(event); }
    return fresh.length;
  }

  async function act(action, question) {
    if (!(await confirmAction(question, action[0].toUpperCase() + action.slice(1) + " job"))) return;
    clear(parts.notice);
    try {
      job = await api(`/fine_tuning/jobs/${jobId}/${action}`, { method: "POST", signal, provider });
      render();
      wake();
    } catch (error) {
      clear(parts.notice, alertBox(error));
    }
  }

  function renderActions() {
    const active = !TERMINAL.has(job.status);
    clear(parts.actions,
      (job.status === "queued" || job.status === "running") &&
        h("button", { type: "button", text: "Pause", onclick: () => act("pause", `Pause ${job.id}? It keeps its progress and can be resumed.`) }),
      job.status === "paused" &&
        h("button", { type: "button", text: "Resume", onclick: () => act("resume", `Resume ${job.id}? It is queued and continues from its last saved step.`) }),
      active && h("button", { type: "button", class: "danger", text: "Cancel", onclick: () => act("cancel", `Cancel ${job.id}? This cannot be undone.`) }),
      job.fine_tuned_model && h("a", { class: "button", href: `#/playground?model=${encodeURIComponent(routedModel(job.fine_tuned_model))}&compare=${encodeURIComponent(routedModel(job.model))}`, text: "Try in playground" }),
      job.result_files.length > 0 && h("button", { type: "button", text: "Download results CSV",
        onclick: (event) => download(`/files/${job.result_files[0]}/content`, `${job.id}-results.csv`, account).catch((error) => clear(parts.notice, alertBox(error))) }),
    );
  }

  // A routed job's models are chatted with as account/model.
  const routedModel = (model) => (account ? `${account}/${model}` : model);

  async function fetchJob() {
    const found = await apiRouted(`/fine_tuning/jobs/${jobId}`, { signal, provider });
    account = found.account;
    return found.body;
  }

  async function fetchRuns() {
    // Eval runs are this deployment's; a routed job's live with its account.
    return account ? [] : (await api(`/fine_tuning/jobs/${jobId}/eval_runs`, { signal })).data;
  }

  let lastActions = null;
  let lastSignature = null;

  function render() {
    const signature = `${JSON.stringify(job)} ${events.length} ${checkpoints.length} ${JSON.stringify(evalRuns)}`;
    if (signature === lastSignature) return;
    lastSignature = signature;
    // A paused or re-queued job resumes from its last saved state and repeats
    // the steps after it: a step's latest report is the one on the final path.
    const byStep = new Map();
    // A checkpoint's eval pass rate arrives later as its own metrics event of that step: merged in.
    for (const e of events) if (e.type === "metrics") byStep.set(e.data.step, { ...byStep.get(e.data.step), ...e.data });
    const metrics = [...byStep.values()].sort((a, b) => a.step - b.step);
    const latest = metrics.filter((m) => m.total_steps).at(-1);
    const method = job.method?.type || "supervised";
    const left = timeLeft(job);
    // The buttons are rebuilt only when they change, so keyboard focus stays put while the page updates.
    const actionsKey = `${job.status} ${job.fine_tuned_model} ${job.result_files.join()}`;
    if (actionsKey !== lastActions) {
      lastActions = actionsKey;
      clear(parts.head, h("h1", {}, "Job ", h("code", { text: job.id })), statusBadge(job.status));
      renderActions();
    }
    clear(parts.facts, h("h2", { id: "facts-h", text: "Overview" }),
      job.error && alertBox(`Failed: ${job.error.message}${job.error.param ? ` [field: ${job.error.param}]` : ""} (${job.error.code})`),
      definitionList([
        ["Provider account", account ? h("code", { text: account }) : undefined], // only for a routed job
        ["Base model", h("code", { text: job.model })],
        ["Fine-tuned model", job.fine_tuned_model && h("code", { text: job.fine_tuned_model })],
        ["Method", method],
        ["Progress", latest ? h("span", { class: "progress-text", text: `step ${latest.step} of ${latest.total_steps}` }) : null],
        ["Time left", left],
        ["Created", when(job.created_at)],
        ["Finished", job.finished_at ? when(job.finished_at) : null],
        ["Trained tokens", job.trained_tokens?.toLocaleString() ?? null],
        ["Suffix", job.user_provided_suffix],
        ["Seed", String(job.seed)],
        ["Training file", fileLink(job.training_file, "training file", account)],
        ["Validation file", fileLink(job.validation_file, "validation file", account)],
        ["Metadata", job.metadata ? Object.entries(job.metadata).map(([k, v]) => `${k}=${v}`).join(", ") : null],
      ]));
    const marks = checkpoints.map((c) => ({ x: c.step_number, label: `checkpoint at step ${c.step_number}` }));
    clear(parts.charts, CHARTS.map(([title, test]) => {
      const lines = series(metrics, checkpoints, test);
      return lines.length || title === "Loss" ? lineChart({ title, series: lines, marks }) : null;
    }));
    const hp = job.method?.[method]?.hyperparameters || job.hyperparameters;
    clear(parts.hyper, h("h2", { id: "hyper-h", text: "Hyperparameters" }),
      definitionList(Object.entries(hp).filter(([, v]) => v !== null).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : String(v)])));
    clear(parts.checkpoints, h("h2", { id: "checkpoints-h", text: "Checkpoints" }),
      checkpoints.length === 0 ? h("p", { class: "muted", text: "No checkpoints yet." }) :
        h("div", { class: "table-wrap" }, h("table", { class: "checkpoints" },
          tableHead(["Step", "Created", "Training loss", "Validation loss", "Full validation loss", "Model", ""]),
          h("tbody", {}, checkpoints.map((c) => h("tr", { dataset: { step: c.step_number } },
            h("td", { text: c.step_number }), h("td", {}, when(c.created_at)),
            h("td", { text: number(c.metrics.train_loss) }), h("td", { text: number(c.metrics.valid_loss) }),
            h("td", { text: number(c.metrics.full_valid_loss) }),
            h("td", {}, h("code", { text: c.fine_tuned_model_checkpoint })),
            h("td", {}, h("a", { class: "button small", href: `#/playground?model=${encodeURIComponent(routedModel(c.fine_tuned_model_checkpoint))}`,
              "aria-label": `Try the checkpoint at step ${c.step_number} in the playground`, text: "Try it" }))))))));
    clear(parts.evals, jobEvalRuns(evalRuns));
    clear(parts.events, h("h2", { id: "events-h" }, "Events ", h("span", { class: "muted", text: `(${events.length})` })),
      h("ol", { class: "events", reversed: true }, [...events].reverse().slice(0, 300).map((e) =>
        h("li", { class: `level-${e.level}` }, when(e.created_at), " ", h("span", { class: "event-message", text: e.message })))));
  }

  let wake = () => {};
  try {
    [job] = await Promise.all([fetchJob(), fetchNewEvents()]);
    checkpoints = (await api(`/fine_tuning/jobs/${jobId}/checkpoints?limit=100`, { signal, provider })).data;
    evalRuns = await fetchRuns();
  } catch (error) {
    if (!signal.aborted) clear(main, h("h1", { text: "Job" }), alertBox(error), h("a", { href: "#/jobs", text: "Back to jobs" }));
    return;
  }
  clear(main, parts.head, parts.actions, parts.notice, parts.facts, parts.charts, parts.checkpoints, parts.evals, parts.hyper,
    parts.events);
  render();

  // Live: while the job is not finished, refresh about once a second (in the
  // background: the page counts as drawn after its first render).
  live().catch(() => {});

  async function live() {
    let finalPass = false;
    while (!signal.aborted) {
      if (TERMINAL.has(job.status)) {
        if (finalPass) break;
        finalPass = true; // one more read after the end: the last events and checkpoints
      }
      try {
        await Promise.race([pause(POLL_MS, signal), new Promise((resolve) => { wake = resolve; })]);
        [job] = await Promise.all([fetchJob(), fetchNewEvents()]);
        checkpoints = (await api(`/fine_tuning/jobs/${jobId}/checkpoints?limit=100`, { signal, provider })).data;
        evalRuns = await fetchRuns();
        parts.notice.querySelector(".stale")?.remove();
        render();
      } catch (error) {
        if (signal.aborted) return;
        clear(parts.notice, h("p", { class: "alert stale", role: "alert", text: `Live updates paused: ${explain(error)}` }));
      }
    }
  }
}
