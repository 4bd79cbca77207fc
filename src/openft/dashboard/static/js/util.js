// DOM and formatting helpers. Text from the API always goes in through
// textContent (never innerHTML), so nothing a user uploaded can run as markup.

export function h(tag, attrs = {}, ...children) {
  const svg = ["svg", "polyline", "line", "text", "g", "rect", "circle", "title", "path"].includes(tag);
  const node = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** A table's <thead> with one column header per name. */
export function tableHead(columns) {
  return h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", text: c }))));
}

export function clear(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

export const timeZone = Intl.DateTimeFormat().resolvedOptions().timeZone;
const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

/** A <time> element for a Unix time, shown in the viewer's zone. */
export function when(unix) {
  if (unix === null || unix === undefined) return h("span", { class: "muted", text: "—" });
  const date = new Date(unix * 1000);
  return h("time", { datetime: date.toISOString(), title: `${date.toISOString()} (UTC)`, text: dateTime.format(date) });
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${seconds % 60} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

export function number(value, digits = 4) {
  return typeof value === "number" ? Number(value.toFixed(digits)).toString() : "—";
}

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}`, text: status.replace("_", " ") });
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

/** Resolves after ``ms`` or rejects when ``signal`` aborts (the page was left). */
export function pause(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); reject(signal.reason); }, { once: true });
  });
}

/** A modal confirmation (native <dialog>: focus trapped, Escape cancels). */
export function confirmAction(question, action) {
  const dialog = document.getElementById("confirm");
  dialog.querySelector("#confirm-text").textContent = question;
  dialog.querySelector("#confirm-ok").textContent = action;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

/** The message of an API error for a person: the server's words, and why a 409 happened. */
export function explain(error) {
  if (error?.name === "AbortError") return null;
  if (!(error && error.status)) return `Could not reach the server: ${error?.message || error}`;
  let text = error.message;
  if (error.status === 409) text = `Not possible right now (409 Conflict): ${text}`;
  if (error.param) text += ` [field: ${error.param}]`;
  return text;
}

export function alertBox(error) {
  const text = typeof error === "string" ? error : explain(error);
  return text ? h("p", { class: "alert", role: "alert", text }) : null;
}
