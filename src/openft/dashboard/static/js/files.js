// Files: list, upload with progress, download, delete (a 409 explained).

import { api, download, upload } from "./api.js";
import { alertBox, bytes, clear, confirmAction, explain, h, tableHead, when } from "./util.js";

const PURPOSES = ["fine-tune", "batch", "assistants", "vision", "user_data", "evals"];

export async function filesPage(main, params, signal) {
  const list = h("div", { class: "table-wrap" });
  const notice = h("div", { "aria-live": "polite" });
  const purpose = h("select", { id: "upload-purpose", name: "purpose" }, PURPOSES.map((p) => h("option", { value: p, text: p })));
  const chooser = h("input", { id: "upload-file", type: "file", name: "file" });
  const progress = h("progress", { id: "files-progress", max: 1, value: 0, hidden: true, "aria-label": "Upload progress" });
  const form = h("form", { class: "upload", "aria-label": "Upload a file" },
    h("div", { class: "field" }, h("label", { for: "upload-file", text: "File" }), chooser),
    h("div", { class: "field" }, h("label", { for: "upload-purpose", text: "Purpose" }), purpose),
    h("button", { type: "submit", class: "primary", text: "Upload" }), progress);
  clear(main, h("h1", { text: "Files" }), form, notice, list);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = chooser.files[0];
    if (!file) { clear(notice, alertBox("Choose a file to upload.")); chooser.focus(); return; }
    progress.hidden = false;
    clear(notice, h("p", { role: "status", text: `Uploading ${file.name}…` }));
    try {
      const created = await upload(file, purpose.value, (f) => { progress.value = f; });
      clear(notice, h("p", { class: "ok", role: "status", text: `Uploaded ${created.filename} as ${created.id}.` }));
      chooser.value = "";
      await load();
    } catch (error) {
      clear(notice, h("p", { class: "alert", role: "alert", text: `${file.name} was not accepted: ${explain(error)}` }));
    } finally {
      progress.hidden = true;
    }
  });

  async function remove(file) {
    if (!(await confirmAction(`Delete ${file.filename} (${file.id})? Its contents are removed for good.`, "Delete file"))) return;
    try {
      await api(`/files/${file.id}`, { method: "DELETE", signal });
      clear(notice, h("p", { class: "ok", role: "status", text: `Deleted ${file.filename}.` }));
      await load();
    } catch (error) {
      clear(notice, h("p", { class: "alert", role: "alert", text: explain(error) }));
    }
  }

  async function load() {
    let files;
    try {
      files = await api("/files?limit=1000", { signal });
    } catch (error) {
      clear(list, alertBox(error));
      return;
    }
    if (files.data.length === 0) {
      clear(list, h("p", { class: "empty", text: "No files yet. Upload a JSONL training file above." }));
      return;
    }
    clear(list, h("table", { class: "files" },
      tableHead(["File", "Name", "Purpose", "Size", "Created", ""]),
      h("tbody", {}, files.data.map((file) => h("tr", { dataset: { file: file.id } },
        h("td", {}, h("code", { text: file.id })), h("td", { text: file.filename }), h("td", { text: file.purpose }),
        h("td", { text: bytes(file.bytes) }), h("td", {}, when(file.created_at)),
        h("td", { class: "row-actions" },
          h("button", { type: "button", class: "small", "aria-label": `Download ${file.filename}`, text: "Download",
            onclick: () => download(`/files/${file.id}/content`, file.filename).catch((e) => clear(notice, alertBox(e))) }),
          h("button", { type: "button", class: "small danger", "aria-label": `Delete ${file.filename}`, text: "Delete", onclick: () => remove(file) })))))));
  }
  await load();
}
