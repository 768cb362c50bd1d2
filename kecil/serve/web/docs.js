// "Documents": ask a knowledge base and open the passages its answer cites; upload files (drag and
// drop, or a folder) into a new or existing knowledge base, which the server then ingests.

import { call } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import { el, isBusy, metaLine, notice, streamInto, withKey } from "./ui.js";

const $ = (id) => document.getElementById(id);
const SKIP = new Set([".git", "node_modules", "__pycache__"]);

/** Fill the knowledge-base pickers from /v1/models' "knowledge-base" entries. */
export function refreshKbs(models, choose) {
  const names = models.filter((m) => m.kind === "knowledge-base").map((m) => m.id.replace(/^rag:/, ""));
  const select = $("kb");
  const keep = choose || select.value;
  select.replaceChildren();
  if (!names.length) select.append(Object.assign(el("option", "", "(none yet: add documents)"), { value: "" }));
  const datalist = $("kb-names");
  datalist.replaceChildren();
  for (const name of names) {
    select.append(Object.assign(el("option", "", name), { value: name }));
    datalist.append(Object.assign(el("option"), { value: name }));
  }
  if (keep && names.includes(keep)) select.value = keep;
}

function where(c) {
  const unit = c.unit || "lines";
  const [start, end] = c.lines || [];
  const span = start === end ? `${unit.replace(/s$/, "")} ${start}` : `${unit} ${start}–${end}`;
  return `${c.file}${c.page ? `, page ${c.page}` : ""}, ${span}`;
}

/** Show citation `c` (its file, page, lines, section and text) in the side panel. */
export function openCitation(c) {
  $("citation").hidden = false;
  $("citation-title").textContent = `Source [${c.number}]`;
  $("citation-where").textContent = where(c) + (c.section ? ` — ${c.section}` : "");
  $("citation-text").textContent = c.text;
  $("citation-close").focus();
}

function answerRenderer(message) {
  const citations = message.meta.citations || [];
  const cite = (n) => {
    const c = citations.find((x) => x.number === n);
    if (!c) return null;
    const button = el("button", "cite", String(n));
    button.type = "button";
    button.setAttribute("aria-label", `Open source ${n}: ${where(c)}`);
    button.addEventListener("click", () => openCitation(c));
    return button;
  };
  const fragment = renderMarkdown(message.content, { cite });
  if (citations.length) {
    const list = el("ol", "sources");
    list.setAttribute("aria-label", "Sources");
    for (const c of citations) {
      const button = el("button", "source", `[${c.number}] ${where(c)}`);
      button.type = "button";
      button.addEventListener("click", () => openCitation(c));
      const li = el("li");
      li.append(button);
      list.append(li);
    }
    fragment.append(list);
  }
  if (message.meta.withheld?.length) {
    fragment.append(el("p", "hint", `Withheld (a number no source supports): ${message.meta.withheld.join(" ")}`));
  }
  return fragment;
}

async function ask(event) {
  event.preventDefault();
  const kb = $("kb").value;
  const question = $("question").value.trim();
  if (!kb) { notice("Add documents to a knowledge base first (on the right), then ask."); return; }
  if (!question || isBusy()) return;
  notice("");
  const log = $("answers");
  const asked = el("article", "msg user");
  asked.append(el("div", "role", `You, to ${kb}`), Object.assign(el("div", "body plain"), { textContent: question }));
  const message = { role: "assistant", content: "", meta: { model: `rag:${kb}` } };
  const node = el("article", "msg assistant");
  node.append(el("div", "role", "Answer"), el("div", "body"));
  log.append(asked, node);
  $("question").value = "";
  await streamInto({ model: `rag:${kb}`, messages: [{ role: "user", content: question }], temperature: 0 }, message, node, answerRenderer);
  node.querySelector(".body").replaceChildren(answerRenderer(message));
  if (message.meta.error) node.append(el("p", "error", message.meta.error));
  node.append(metaLine(message.meta));
  log.scrollTop = log.scrollHeight;
}

// --- uploads --------------------------------------------------------------------------------------
async function entryFiles(entry, prefix, out) {
  if (entry.isFile) {
    out.push({ path: prefix + entry.name, file: await new Promise((ok, fail) => entry.file(ok, fail)) });
  } else if (entry.isDirectory && !SKIP.has(entry.name)) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
      if (!batch.length) break;
      for (const child of batch) await entryFiles(child, `${prefix}${entry.name}/`, out);
    }
  }
}

async function droppedFiles(dataTransfer) {
  const entries = [...dataTransfer.items].map((item) => item.webkitGetAsEntry?.()).filter(Boolean);
  if (!entries.length) return [...dataTransfer.files].map((file) => ({ path: file.name, file }));
  const out = [];
  for (const entry of entries) await entryFiles(entry, "", out);
  return out;
}

function row(text, className) {
  const li = el("li", className, text);
  $("upload-list").append(li);
  return li;
}

const pathInUrl = (path) => path.split("/").map(encodeURIComponent).join("/");

/** Upload `files` ([{path, file}]) into the chosen knowledge base, ingest them, and show the report. */
export async function upload(files) {
  const kb = $("upload-kb").value.trim() || $("kb").value;
  const state = $("upload-state");
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(kb)) {
    state.textContent = "Name the knowledge base first: letters, digits, '.', '_' or '-' (at most 64).";
    $("upload-kb").focus();
    return;
  }
  $("upload-list").replaceChildren();
  const refused = $("upload-error");
  refused.hidden = true;
  const progress = $("ingest-progress");
  progress.hidden = false;
  progress.max = files.length;
  progress.value = 0;
  let sent = 0;
  for (const [i, { path, file }] of files.entries()) {
    state.textContent = `Uploading ${path} (${i + 1} of ${files.length})`;
    try {
      await withKey(() => call(`/kecil/kb/${encodeURIComponent(kb)}/files/${pathInUrl(path)}`, { method: "PUT", body: file, contentType: "application/octet-stream" }));
      sent++;
    } catch (error) {
      if (error.code === "upload_limit" || error.status === 507) {  // the server's limit or its disk: the rest would fail too
        const rest = files.length - i - 1;
        refused.textContent = `${path}${rest ? ` and the ${rest} file(s) after it were` : " was"} not uploaded: ${error.message}`;
        refused.hidden = false;
        break;
      }
      row(`skipped ${path}: ${error.message}`, "skipped");
    }
    progress.value += 1;
  }
  if (!sent) { state.textContent = "No file was uploaded."; progress.hidden = true; return; }
  state.textContent = `Ingesting ${sent} file(s) into ${kb}…`;
  try {
    let job = await withKey(() => call(`/kecil/kb/${encodeURIComponent(kb)}/ingest`, { method: "POST" }));
    while (job.state === "running") {
      progress.max = Math.max(job.total, 1);
      progress.value = job.done;
      if (job.total) state.textContent = `Ingesting into ${kb}: ${job.done} of ${job.total} files`;
      await new Promise((ok) => setTimeout(ok, 250));
      job = await withKey(() => call(`/kecil/ingests/${job.id}`));
    }
    if (job.state === "failed") throw new Error(job.error);
    const r = job.report;
    progress.max = 1;
    progress.value = 1;
    state.textContent = `${kb}: ${r.added.length} added, ${r.updated.length} updated, ${r.unchanged} unchanged, ` +
      `${r.skipped.length} skipped; ${r.chunks} passages in ${r.seconds} s (${r.embedder}).`;
    for (const name of [...r.added, ...r.updated]) row(`added ${name}`, "added");
    for (const s of r.skipped) row(`skipped ${s.file}: ${s.reason}`, "skipped");
    for (const note of r.notes) row(note, "note");
    const models = await withKey(() => call("/v1/models"));
    refreshKbs(models.data, kb);
  } catch (error) {
    state.textContent = `The ingest failed: ${error.message}`;
  }
}

export function initDocs() {
  $("ask").addEventListener("submit", ask);
  $("question").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("ask").requestSubmit(); }
  });
  $("citation-close").addEventListener("click", () => { $("citation").hidden = true; });
  const drop = $("drop");
  const choose = () => $("files").click();
  drop.addEventListener("click", choose);
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); choose(); } });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    upload(await droppedFiles(e.dataTransfer));
  });
  $("choose-folder").addEventListener("click", () => $("folder").click());
  for (const input of [$("files"), $("folder")]) {
    input.addEventListener("change", () => {  // a chosen folder's files keep their paths inside it
      const files = [...input.files].map((file) => ({ path: file.webkitRelativePath || file.name, file }));
      input.value = "";
      if (files.length) upload(files);
    });
  }
}
