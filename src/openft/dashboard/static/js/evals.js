// Evals: the list of evals, one eval with its runs (pass rate per criterion)
// and a run's output items (filtered by status), and two runs side by side,
// item by item: the question users ask of a base model and its fine-tune.

import { api, query } from "./api.js";
import { alertBox, clear, h, number, pause, statusBadge, tableHead, when } from "./util.js";

const FINISHED = new Set(["completed", "failed", "canceled"]);
const enc = encodeURIComponent; // ids from the address bar go into API paths encoded
const POLL_MS = 1000;

function percent(passed, total) {
  return total ? `${Math.round((100 * passed) / total)}%` : "—";
}

function passRate(run) {
  const c = run.result_counts;
  const graded = c.passed + c.failed + c.errored;
  return graded ? `${percent(c.passed, graded)} (${c.passed}/${graded})` : "—";
}

function lastUserText(sample, item) {
  const user = [...(sample?.input || [])].reverse().find((m) => m.role === "user");
  return user ? user.content : JSON.stringify(item);
}

function answerOf(sample) {
  if (sample?.error) return h("span", { class: "alert-text", text: `error: ${sample.error.message}` });
  const text = sample?.output?.[0]?.content;
  if (text === undefined || text === null) return h("span", { class: "muted", text: "—" });
  // An answer of blanks is shown escaped ("\n\n"), not as an empty cell.
  return text.trim() ? h("span", { class: "answer", text }) : h("code", { class: "answer muted", text: JSON.stringify(text) });
}

async function allItems(evalId, runId, signal) {
  const items = [];
  let after = null;
  for (;;) {
    const page = await api(`/evals/${enc(evalId)}/runs/${enc(runId)}/output_items${query({ limit: 100, after })}`, { signal });
    items.push(...page.data);
    if (!page.has_more) return items;
    after = page.data.at(-1).id;
  }
}

// ---------------------------------------------------------------- the list

export async function evalsPage(main, params, signal) {
  const body = h("div", { class: "table-wrap" });
  clear(main, h("div", { class: "page-head" }, h("h1", { text: "Evals" })), body);
  const page = await api(`/evals${query({ limit: 100, order: "desc" })}`, { signal });
  if (page.data.length === 0) {
    clear(body, h("p", { class: "empty" }, "No evals yet. Create one with the API (client.evals.create) or ",
      h("code", { text: "openft evals create" }), "."));
    return;
  }
  clear(body, h("table", { class: "evals" },
    h("caption", { class: "visually-hidden", text: "Evals, newest first" }),
    tableHead(["Eval", "Testing criteria", "Created"]),
    h("tbody", {}, page.data.map((e) => h("tr", {},
      h("td", {}, h("a", { href: `#/evals/${e.id}`, text: e.name }), " ", h("code", { class: "muted", text: e.id })),
      h("td", { text: e.testing_criteria.map((c) => c.name).join(", ") }),
      h("td", {}, when(e.created_at)))))));
}

// ---------------------------------------------------------------- one eval

export async function evalPage(main, evalId, params, signal) {
  const runId = params.get("run");
  const status = params.get("status") || "";
  const evaluation = await api(`/evals/${enc(evalId)}`, { signal });
  const runsPart = h("section", { "aria-labelledby": "runs-h" });
  const itemsPart = h("section", { "aria-labelledby": "items-h" });
  const notice = h("div", { "aria-live": "polite" });
  clear(main,
    h("div", { class: "page-head" }, h("h1", {}, "Eval ", h("span", { text: evaluation.name }))),
    h("p", {}, h("code", { text: evaluation.id }), " · created ", when(evaluation.created_at)),
    h("h2", { text: "Testing criteria" }),
    h("ul", { class: "criteria" }, evaluation.testing_criteria.map((c) => h("li", {},
      h("strong", { text: c.name }), ` ${c.type}`, c.pass_threshold !== undefined ? ` (passes at ${c.pass_threshold})` : ""))),
    notice, runsPart, itemsPart);

  const chosen = new Set();
  function renderRuns(runs) {
    const compare = h("button", { type: "button", class: "primary", disabled: chosen.size !== 2, text: "Compare the two selected runs",
      onclick: () => { const [a, b] = [...chosen]; location.hash = `#/evals/${evalId}/compare?a=${a}&b=${b}`; } });
    const ids = evaluation.testing_criteria.map((c) => c.id);
    clear(runsPart, h("h2", { id: "runs-h", text: "Runs" }),
      runs.length === 0 ? h("p", { class: "muted", text: "No runs yet." }) : [
        h("div", { class: "table-wrap" }, h("table", { class: "runs" },
          tableHead(["Compare", "Run", "Model", "Status", "Passed", ...evaluation.testing_criteria.map((c) => c.name), "Created"]),
          h("tbody", {}, runs.map((run) => {
            const box = h("input", { type: "checkbox", "aria-label": `Select ${run.name} to compare`, checked: chosen.has(run.id),
              onchange: (event) => { if (event.target.checked) chosen.add(run.id); else chosen.delete(run.id); renderRuns(runs); } });
            const per = new Map(run.per_testing_criteria_results.map((r) => [r.testing_criteria, r]));
            return h("tr", { dataset: { run: run.id }, class: run.id === runId ? "selected" : null },
              h("td", {}, box),
              h("td", {}, h("a", { href: `#/evals/${evalId}?run=${run.id}`, text: run.name })),
              h("td", { class: "model" }, run.model ? h("code", { text: run.model }) : h("span", { class: "muted", text: "jsonl samples" })),
              h("td", {}, statusBadge(run.status), run.error ? h("div", { class: "alert-text", text: run.error.message }) : null),
              h("td", { class: "rate", text: passRate(run) }),
              ids.map((id) => { const r = per.get(id); return h("td", { text: r ? percent(r.passed, r.passed + r.failed) : "—" }); }),
              h("td", {}, when(run.created_at)));
          })))),
        h("div", { class: "actions" }, compare)]);
  }

  async function renderItems(cursor = null, cursors = [null]) {
    if (!runId) return;
    const run = await api(`/evals/${enc(evalId)}/runs/${enc(runId)}`, { signal });
    const filter = h("select", { id: "item-status", name: "status" },
      [["", "All items"], ["pass", "Passed"], ["fail", "Failed"], ["error", "Errored"]].map(([v, t]) => h("option", { value: v, text: t })));
    filter.value = status;
    filter.addEventListener("change", () => { location.hash = `#/evals/${evalId}${query({ run: runId, status: filter.value })}`; });
    const page = await api(`/evals/${enc(evalId)}/runs/${enc(runId)}/output_items${query({ limit: 50, after: cursor, status })}`, { signal });
    const ids = evaluation.testing_criteria.map((c) => c.id);
    clear(itemsPart, h("h2", { id: "items-h" }, "Items of ", h("span", { text: run.name })),
      h("form", { class: "filters", "aria-label": "Filter items" }, h("label", { for: "item-status", text: "Show" }), filter),
      page.data.length === 0 ? h("p", { class: "empty", text: FINISHED.has(run.status) ? "No items match." : "No items graded yet." }) :
        h("div", { class: "table-wrap" }, h("table", { class: "items" },
          tableHead(["Item", "Status", "Input", "Answer", ...evaluation.testing_criteria.map((c) => c.name)]),
          h("tbody", {}, page.data.map((item) => {
            const byId = new Map(item.results.map((r) => [r.name, r]));
            return h("tr", { dataset: { item: item.datasource_item_id } },
              h("td", { text: item.datasource_item_id }), h("td", {}, statusBadge(item.status)),
              h("td", { class: "text", text: lastUserText(item.sample, item.datasource_item) }),
              h("td", { class: "text" }, answerOf(item.sample)),
              ids.map((id) => { const r = byId.get(id); return h("td", { class: r?.passed ? "ok" : "warn", text: r ? `${r.passed ? "pass" : "fail"} ${number(r.score, 3)}` : "—" }); }));
          })))),
      h("nav", { class: "pager", "aria-label": "Item pages" },
        h("button", { type: "button", disabled: cursors.length === 1, text: "Previous", onclick: () => { cursors.pop(); renderItems(cursors.at(-1), cursors); } }),
        h("span", { text: `Page ${cursors.length}` }),
        h("button", { type: "button", disabled: !page.has_more, text: "Next",
          onclick: () => { const next = page.data.at(-1).id; renderItems(next, [...cursors, next]); } })));
  }

  let runs = (await api(`/evals/${enc(evalId)}/runs${query({ limit: 100, order: "desc" })}`, { signal })).data;
  renderRuns(runs);
  await renderItems();
  live().catch(() => {});

  // While a run is queued or in progress, its counts (and items) follow it.
  async function live() {
    while (!signal.aborted && runs.some((r) => !FINISHED.has(r.status))) {
      await pause(POLL_MS, signal);
      runs = (await api(`/evals/${enc(evalId)}/runs${query({ limit: 100, order: "desc" })}`, { signal })).data;
      renderRuns(runs);
      if (runId) await renderItems();
    }
  }
}

// ---------------------------------------------------------- side by side

export async function comparePage(main, evalId, params, signal) {
  const [a, b] = [params.get("a"), params.get("b")];
  if (!a || !b) { clear(main, h("h1", { text: "Compare runs" }), alertBox("Pick two runs on the eval's page.")); return; }
  const [evaluation, runA, runB, itemsA, itemsB] = await Promise.all([
    api(`/evals/${enc(evalId)}`, { signal }), api(`/evals/${enc(evalId)}/runs/${enc(a)}`, { signal }), api(`/evals/${enc(evalId)}/runs/${enc(b)}`, { signal }),
    allItems(evalId, a, signal), allItems(evalId, b, signal)]);
  const byA = new Map(itemsA.map((i) => [i.datasource_item_id, i]));
  const byB = new Map(itemsB.map((i) => [i.datasource_item_id, i]));
  const ids = [...new Set([...byA.keys(), ...byB.keys()])].sort((x, y) => x - y);
  const onlyDiff = h("input", { type: "checkbox", id: "only-different" });
  const better = ids.filter((id) => byB.get(id)?.status === "pass" && byA.get(id)?.status !== "pass").length;
  const worse = ids.filter((id) => byA.get(id)?.status === "pass" && byB.get(id)?.status !== "pass").length;
  const body = h("div", { class: "table-wrap" });
  const label = (run) => `${run.name}${run.model && run.model !== run.name ? ` (${run.model})` : ""}`;
  clear(main,
    h("div", { class: "page-head" }, h("h1", {}, "Compare runs of ", h("a", { href: `#/evals/${evalId}`, text: evaluation.name }))),
    h("dl", { class: "facts compare-summary" },
      h("dt", { text: "A" }), h("dd", {}, h("span", { text: label(runA) }), " · passed ", h("strong", { class: "rate-a", text: passRate(runA) })),
      h("dt", { text: "B" }), h("dd", {}, h("span", { text: label(runB) }), " · passed ", h("strong", { class: "rate-b", text: passRate(runB) })),
      h("dt", { text: "Changes" }), h("dd", { class: "changes", text: `B passes ${better} item(s) that A does not; A passes ${worse} that B does not.` })),
    h("div", { class: "filters" }, onlyDiff, h("label", { for: "only-different", text: "Only items where the verdicts differ" })),
    body);

  function render() {
    const shown = ids.filter((id) => !onlyDiff.checked || byA.get(id)?.status !== byB.get(id)?.status);
    clear(body, h("table", { class: "compare" },
      h("caption", { class: "visually-hidden", text: "Items of run A and run B side by side" }),
      tableHead(["Item", "Input", "A: answer", "A", "B: answer", "B"]),
      h("tbody", {}, shown.map((id) => {
        const [x, y] = [byA.get(id), byB.get(id)];
        return h("tr", { dataset: { item: id }, class: x?.status !== y?.status ? "differs" : null },
          h("td", { text: id }),
          h("td", { class: "text", text: lastUserText([x, y].find((i) => i?.sample?.input?.length)?.sample, (x || y).datasource_item) }),
          h("td", { class: "text" }, x ? answerOf(x.sample) : "—"), h("td", {}, x ? statusBadge(x.status) : "—"),
          h("td", { class: "text" }, y ? answerOf(y.sample) : "—"), h("td", {}, y ? statusBadge(y.status) : "—"));
      }))));
  }
  onlyDiff.addEventListener("change", render);
  render();
}

// ------------------------------------------------- a job's runs (job page)

export function jobEvalRuns(runs) {
  return [h("h2", { id: "evals-h", text: "Evals" }),
    runs.length === 0 ? h("p", { class: "muted" }, "No eval has run on this job's model or checkpoints yet. ",
      h("a", { href: "#/evals", text: "Evals" })) :
      h("div", { class: "table-wrap" }, h("table", { class: "job-evals" },
        tableHead(["Run", "Model", "Status", "Passed"]),
        h("tbody", {}, runs.map((run) => h("tr", {},
          h("td", {}, h("a", { href: `#/evals/${run.eval_id}?run=${run.id}`, text: run.name })),
          h("td", { class: "model" }, h("code", { text: run.model })),
          h("td", {}, statusBadge(run.status)), h("td", { class: "rate", text: passRate(run) }))))))];
}
