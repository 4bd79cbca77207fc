// The dashboard's only way to the server: the public /v1 API with the key
// the user signed in with, kept in sessionStorage (this tab only).

const KEY = "openft.apiKey";

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set key(value) { if (value) sessionStorage.setItem(KEY, value); else sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = error?.code || null;
    this.param = error?.param || null;
  }
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${session.key}`, ...extra };
}

async function failure(response, signedIn = true) {
  let error = null;
  try { error = (await response.json()).error; } catch { /* not JSON */ }
  // The session's key was refused (revoked, say): the app signs out.
  if (response.status === 401 && signedIn && session.key) window.dispatchEvent(new CustomEvent("openft:unauthorized"));
  return new ApiError(response.status, error);
}

/** ``path`` under /v1; ``body`` is sent as JSON; ``provider`` names the
provider account the request goes to (x-tfy-provider-name). Returns the parsed JSON. */
export async function api(path, options = {}) {
  return (await apiRouted(path, options)).body;
}

/** Like ``api``, and the provider account that answered (the gateway's
openft-provider-account header), null when this deployment did. */
export async function apiRouted(path, { method = "GET", body, signal, key, provider } = {}) {
  const init = { method, signal, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (key) init.headers.Authorization = `Bearer ${key}`;
  if (provider) init.headers["x-tfy-provider-name"] = provider;
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(`/v1${path}`, init);
  if (!response.ok) throw await failure(response, !key);
  return { body: await response.json(), account: response.headers.get("openft-provider-account") };
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.append(name, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** Fetches a file's bytes with the key and saves them under ``filename``
(from the provider account ``provider`` when given). */
export async function download(path, filename, provider) {
  const response = await fetch(`/v1${path}`, { headers: headers(provider ? { "x-tfy-provider-name": provider } : {}) });
  if (!response.ok) throw await failure(response);
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** Uploads a file (XMLHttpRequest: fetch cannot report upload progress). */
export function upload(file, purpose, onProgress) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    form.append("purpose", purpose);
    form.append("file", file, file.name);
    const request = new XMLHttpRequest();
    request.open("POST", "/v1/files");
    request.setRequestHeader("Authorization", `Bearer ${session.key}`);
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    request.addEventListener("load", () => {
      let body = null;
      try { body = JSON.parse(request.responseText); } catch { /* not JSON */ }
      if (request.status >= 200 && request.status < 300) resolve(body);
      else reject(new ApiError(request.status, body?.error));
    });
    request.addEventListener("error", () => reject(new Error("the upload was interrupted")));
    request.send(form);
  });
}

/** Streams a chat completion; calls ``onText`` with each piece of text. */
export async function streamChat(body, onText, signal) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST", signal,
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let usage = null;
  let finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return { usage, finish };
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(500, chunk.error);
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.delta?.content) onText(choice.delta.content);
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
  }
  return { usage, finish };
}
