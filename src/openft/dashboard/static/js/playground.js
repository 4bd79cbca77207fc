// Playground: streamed chat with any model of the organisation (base,
// fine-tuned, checkpoint), alone or two side by side on the same prompt.

import { api, streamChat } from "./api.js";
import { alertBox, clear, explain, h } from "./util.js";

function pane(index, models, initial) {
  const id = `model-${index}`;
  const input = h("input", { id, name: id, list: "model-list", value: initial || "", autocomplete: "off", spellcheck: "false" });
  const transcript = h("div", { class: "transcript", "aria-live": "polite", "aria-label": `Conversation with model ${index + 1}` });
  const status = h("p", { class: "muted pane-status" });
  const element = h("section", { class: "pane", dataset: { pane: index } },
    h("div", { class: "field" }, h("label", { for: id, text: index === 0 ? "Model" : "Compare with" }), input),
    transcript, status);
  return { element, input, transcript, status, messages: [] };
}

export async function playgroundPage(main, params, signal) {
  let models = [];
  try { models = (await api("/models", { signal })).data.map((m) => m.id); } catch (error) {
    if (signal.aborted) return;
    main.append(alertBox(error));
  }
  const compareWith = params.get("compare");
  const first = params.get("model") || models[0] || "";
  const panes = [pane(0, models, first), pane(1, models, compareWith || models.find((m) => m !== first) || "")];
  const compare = h("input", { id: "compare", type: "checkbox", checked: Boolean(compareWith) });
  const system = h("textarea", { id: "system", name: "system", rows: 2, placeholder: "Optional system message" });
  const prompt = h("textarea", { id: "prompt", name: "prompt", rows: 3, required: true, placeholder: "Ask something…" });
  const temperature = h("input", { id: "temperature", name: "temperature", type: "number", min: 0, max: 2, step: 0.1, value: 0 });
  const maxTokens = h("input", { id: "max-tokens", name: "max_tokens", type: "number", min: 1, max: 4096, value: 128 });
  const send = h("button", { type: "submit", class: "primary", text: "Send" });
  const stop = h("button", { type: "button", text: "Stop", disabled: true });
  const reset = h("button", { type: "button", text: "New conversation" });
  const notice = h("div", { "aria-live": "polite" });
  const grid = h("div", { class: "panes" }, panes.map((p) => p.element));
  const showPanes = () => { panes[1].element.hidden = !compare.checked; grid.classList.toggle("two", compare.checked); };
  compare.addEventListener("change", showPanes);
  let running = null;
  stop.addEventListener("click", () => running?.abort());
  reset.addEventListener("click", () => { for (const p of panes) { p.messages = []; clear(p.transcript); clear(p.status); } });

  async function ask(p, text, controller) {
    const model = p.input.value.trim();
    if (!model) { clear(p.status, alertBox("Choose a model.")); return; }
    p.messages.push({ role: "user", content: text });
    const answer = h("div", { class: "message assistant", dataset: { model } });
    p.transcript.append(h("div", { class: "message user", text }), h("p", { class: "who-said", text: model }), answer);
    clear(p.status, "Generating…");
    const started = performance.now();
    try {
      const messages = system.value.trim() ? [{ role: "system", content: system.value.trim() }, ...p.messages] : p.messages;
      const { usage, finish } = await streamChat({
        model, messages, temperature: Number(temperature.value), max_tokens: Number(maxTokens.value),
      }, (piece) => { answer.textContent += piece; }, controller.signal);
      p.messages.push({ role: "assistant", content: answer.textContent });
      const seconds = (performance.now() - started) / 1000;
      clear(p.status, `${finish || "done"} · ${usage ? `${usage.completion_tokens} tokens · ` : ""}${seconds.toFixed(1)} s`);
      answer.dataset.done = "true";
    } catch (error) {
      p.messages.pop();
      answer.dataset.done = "true";
      clear(p.status, controller.signal.aborted ? "Stopped." : alertBox(explain(error)));
    }
  }

  const form = h("form", { class: "playground" },
    h("div", { class: "field checkbox" }, compare, h("label", { for: "compare", text: "Compare two models side by side" })),
    grid,
    h("div", { class: "field" }, h("label", { for: "system", text: "System message" }), system),
    h("div", { class: "field" }, h("label", { for: "prompt", text: "Prompt" }), prompt),
    h("div", { class: "grid" },
      h("div", { class: "field" }, h("label", { for: "temperature", text: "Temperature" }), temperature),
      h("div", { class: "field" }, h("label", { for: "max-tokens", text: "Max tokens" }), maxTokens)),
    notice,
    h("div", { class: "actions" }, send, stop, reset));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = prompt.value.trim();
    if (!text) { clear(notice, alertBox("Write a prompt first.")); prompt.focus(); return; }
    clear(notice);
    running = new AbortController();
    signal.addEventListener("abort", () => running?.abort(), { once: true });
    send.disabled = true;
    stop.disabled = false;
    const active = compare.checked ? panes : [panes[0]];
    await Promise.all(active.map((p) => ask(p, text, running)));
    prompt.value = "";
    send.disabled = false;
    stop.disabled = true;
    running = null;
  });
  clear(main, h("h1", { text: "Playground" }),
    h("datalist", { id: "model-list" }, models.map((m) => h("option", { value: m }))), form);
  showPanes();
}
