// The dashboard's entry point: sign-in, the header, and a hash router
// (#/jobs, #/jobs/{id}, #/new, #/files, #/playground?model=..., #/evals,
// #/evals/{id}?run=..., #/evals/{id}/compare?a=...&b=...). Each page is
// an async function of (main, params, signal); the signal aborts when the
// user leaves the page, which stops its requests and live updates.

import { api, session } from "./api.js";
import { comparePage, evalPage, evalsPage } from "./evals.js";
import { filesPage } from "./files.js";
import { jobPage, jobsPage } from "./jobs.js";
import { newJobPage } from "./newjob.js";
import { playgroundPage } from "./playground.js";
import { alertBox, clear, h, timeZone } from "./util.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
let current = null;

const ROUTES = [
  [/^\/jobs\/([\w-]+)$/, (match, params, signal) => jobPage(main, match[1], signal, params), "Job"],
  [/^\/jobs$/, (match, params, signal) => jobsPage(main, params, signal), "Jobs"],
  [/^\/new$/, (match, params, signal) => newJobPage(main, params, signal), "New job"],
  [/^\/files$/, (match, params, signal) => filesPage(main, params, signal), "Files"],
  [/^\/playground$/, (match, params, signal) => playgroundPage(main, params, signal), "Playground"],
  [/^\/evals$/, (match, params, signal) => evalsPage(main, params, signal), "Evals"],
  [/^\/evals\/([\w-]+)$/, (match, params, signal) => evalPage(main, match[1], params, signal), "Eval"],
  [/^\/evals\/([\w-]+)\/compare$/, (match, params, signal) => comparePage(main, match[1], params, signal), "Compare runs"],
];

function signInPage(message) {
  nav.hidden = true;
  who.hidden = true;
  const key = h("input", { id: "api-key", name: "api-key", type: "password", required: true, autocomplete: "off", spellcheck: "false" });
  const notice = h("div", { "aria-live": "polite" }, message && alertBox(message));
  const form = h("form", { class: "sign-in card" },
    h("h1", { text: "Sign in to openft" }),
    h("p", { class: "muted", text: "Paste an API key (sk-openft-…). It stays in this browser tab only and is forgotten when the tab closes." }),
    h("div", { class: "field" }, h("label", { for: "api-key", text: "API key" }), key),
    notice,
    h("button", { type: "submit", class: "primary", text: "Sign in" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const me = await api("/me", { key: key.value.trim() });
      session.key = key.value.trim();
      sessionStorage.setItem("openft.org", me.name || me.id);
      if (!location.hash || location.hash === "#/" || location.hash === "#/sign-in") location.hash = "#/jobs";
      else route();
    } catch (error) {
      clear(notice, alertBox(error.status === 401 ? "That key was not accepted (401). Check it and try again." : error));
      key.focus();
    }
  });
  clear(main, form);
  document.title = "Sign in · openft";
  key.focus();
}

function signOut(message) {
  current?.abort();
  session.key = null;
  sessionStorage.removeItem("openft.org");
  signInPage(message);
}

async function route() {
  current?.abort();
  current = new AbortController();
  if (!session.key) { signInPage(); return; }
  nav.hidden = false;
  who.hidden = false;
  document.getElementById("org").textContent = `Organisation: ${sessionStorage.getItem("openft.org")}`;
  const [path, search] = (location.hash.slice(1) || "/jobs").split("?");
  const params = new URLSearchParams(search || "");
  const found = ROUTES.find(([pattern]) => pattern.test(path));
  for (const link of nav.querySelectorAll("a")) {
    const target = link.getAttribute("href").slice(1);
    const here = path === target || (["/jobs", "/evals"].includes(target) && path.startsWith(`${target}/`));
    if (here) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  if (!found) {
    clear(main, h("h1", { text: "Not found" }), h("p", {}, "No such page. ", h("a", { href: "#/jobs", text: "Go to the jobs." })));
    return;
  }
  const [pattern, render, title] = found;
  document.title = `${title} · openft`;
  const signal = current.signal;
  try {
    await render(path.match(pattern), params, signal);
  } catch (error) {
    if (!signal.aborted) clear(main, h("h1", { text: title }), alertBox(error));
  }
  if (!signal.aborted) main.dataset.ready = path;
}

document.getElementById("sign-out").addEventListener("click", () => signOut());
window.addEventListener("openft:unauthorized", () => signOut("Your key is no longer accepted (401); sign in again."));
window.addEventListener("hashchange", () => { delete main.dataset.ready; route(); });
document.getElementById("zone").textContent = `Times are shown in your time zone, ${timeZone}.`;
route();
