// The page's entry: tabs, the model picker, and the chat (conversations kept in this browser's
// localStorage, exported and imported as JSON). Documents and status live in docs.js and
// status.js, what they share (the key dialog, streaming an answer) in ui.js.

import { call } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import { initDocs, refreshKbs } from "./docs.js";
import { initStatus } from "./status.js";
import { el, initKeyDialog, isBusy, metaLine, notice, stop, streamInto, withKey } from "./ui.js";

const $ = (id) => document.getElementById(id);
const STORE = "kecil.conversations";
const SETTINGS = "kecil.settings";
const state = { conversations: [], current: null, models: [] };

// --- models -----------------------------------------------------------------------------------
async function loadModels() {
  const listing = await withKey(() => call("/v1/models"));
  state.models = listing.data;
  const select = $("model");
  const chosen = select.value || loadSettings().model;
  select.replaceChildren();
  for (const m of listing.data.filter((m) => m.kind === "chat" || m.kind === "route")) {
    const option = el("option", "", m.id + (m.kind === "route" ? " (routed)" : ""));
    option.value = m.id;
    select.append(option);
  }
  if (chosen && [...select.options].some((o) => o.value === chosen)) select.value = chosen;
  refreshKbs(listing.data);
}

// --- settings and conversations ----------------------------------------------------------------
function loadSettings() {
  try { return JSON.parse(localStorage.getItem(SETTINGS)) || {}; } catch { return {}; }
}
function saveSettings() {
  localStorage.setItem(SETTINGS, JSON.stringify({
    model: $("model").value, system: $("system").value, temperature: $("temperature").value, maxTokens: $("max-tokens").value,
  }));
}
function save() {
  localStorage.setItem(STORE, JSON.stringify({ current: state.current, conversations: state.conversations }));
}
function load() {
  try {
    const stored = JSON.parse(localStorage.getItem(STORE));
    state.conversations = validConversations(stored?.conversations || []);
    state.current = stored?.current;
  } catch { state.conversations = []; }
  if (!state.conversations.some((c) => c.id === state.current)) state.current = state.conversations[0]?.id ?? null;
}
const newId = () => `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
const current = () => state.conversations.find((c) => c.id === state.current);

/** Conversations read back from storage or a file: anything not of the expected shape is dropped. */
function validConversations(list) {
  if (!Array.isArray(list)) return [];
  return list.filter((c) => c && Array.isArray(c.messages)).map((c) => ({
    id: typeof c.id === "string" ? c.id : newId(),
    title: typeof c.title === "string" ? c.title.slice(0, 200) : "Imported chat",
    messages: c.messages.filter((m) => m && ["user", "assistant"].includes(m.role) && typeof m.content === "string")
      .map((m) => ({ role: m.role, content: m.content, meta: m.meta && typeof m.meta === "object" ? m.meta : {} })),
  }));
}

function newConversation() {
  const conversation = { id: newId(), title: "New chat", messages: [] };
  state.conversations.unshift(conversation);
  state.current = conversation.id;
  save();
  render();
  $("prompt").focus();
}

function renderList() {
  const list = $("conversation-list");
  list.replaceChildren();
  for (const c of state.conversations) {
    const li = el("li");
    const open = el("button", "open", c.title || "New chat");
    open.type = "button";
    open.setAttribute("aria-current", String(c.id === state.current));
    open.addEventListener("click", () => { if (!isBusy()) { state.current = c.id; save(); render(); } });
    const remove = el("button", "delete", "×");
    remove.type = "button";
    remove.setAttribute("aria-label", `Delete the chat ${c.title}`);
    remove.addEventListener("click", () => {
      if (isBusy() || !confirm(`Delete "${c.title}"?`)) return;
      state.conversations = state.conversations.filter((x) => x !== c);
      if (state.current === c.id) state.current = state.conversations[0]?.id ?? null;
      save();
      render();
    });
    li.append(open, remove);
    list.append(li);
  }
}

function messageNode(message, index) {
  const article = el("article", `msg ${message.role}`);
  article.dataset.index = index;
  article.append(el("div", "role", message.role === "user" ? "You" : "Assistant"));
  const body = el("div", message.role === "user" ? "body plain" : "body");
  if (message.role === "user") body.textContent = message.content;
  else body.append(renderMarkdown(message.content));
  article.append(body);
  if (message.role === "assistant") {
    if (message.meta?.error) article.append(el("p", "error", message.meta.error));
    article.append(metaLine(message.meta || {}));
  }
  const actions = el("div", "actions");
  const conversation = current();
  if (message.role === "user") {
    const edit = el("button", "edit", "Edit");
    edit.type = "button";
    edit.addEventListener("click", () => startEdit(article, index));
    actions.append(edit);
  } else if (index === conversation.messages.length - 1) {
    const again = el("button", "regenerate", "Regenerate");
    again.type = "button";
    again.addEventListener("click", () => { if (!isBusy()) { conversation.messages.pop(); generate(); } });
    actions.append(again);
  }
  article.append(actions);
  return article;
}

function startEdit(article, index) {
  if (isBusy()) return;
  const conversation = current();
  const area = el("textarea", "edit");
  area.value = conversation.messages[index].content;
  area.setAttribute("aria-label", "Edit the message");
  const resend = el("button", "primary", "Send");
  const cancel = el("button", "", "Cancel");
  resend.type = cancel.type = "button";
  resend.addEventListener("click", () => {
    if (!area.value.trim()) return;
    conversation.messages.splice(index);  // the edited turn and everything after it are replaced
    conversation.messages.push({ role: "user", content: area.value, meta: {} });
    if (index === 0) conversation.title = area.value.slice(0, 60);  // the title names the first question
    generate();
  });
  cancel.addEventListener("click", render);
  area.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); resend.click(); }
  });
  const actions = el("div", "actions");
  actions.append(resend, cancel);
  article.replaceChildren(el("div", "role", "You"), area, actions);
  area.focus();
}

function render() {
  renderList();
  const box = $("messages");
  box.replaceChildren();
  const conversation = current();
  if (!conversation) return;
  conversation.messages.forEach((m, i) => box.append(messageNode(m, i)));
  box.scrollTop = box.scrollHeight;
}

async function generate() {
  const conversation = current();
  const reply = { role: "assistant", content: "", meta: { model: $("model").value } };
  conversation.messages.push(reply);
  if (conversation.title === "New chat") conversation.title = conversation.messages[0].content.slice(0, 60);
  save();
  render();
  const node = $("messages").lastElementChild;
  const system = $("system").value.trim();
  const messages = conversation.messages.slice(0, -1).map(({ role, content }) => ({ role, content }));
  const body = {
    model: $("model").value,
    messages: system ? [{ role: "system", content: system }, ...messages] : messages,
    temperature: Number($("temperature").value),
    max_tokens: Number($("max-tokens").value) || undefined,
  };
  await streamInto(body, reply, node);
  save();
  render();
}

// --- export and import ---------------------------------------------------------------------------
function exportConversations() {
  const blob = new Blob([JSON.stringify({ kecil: "conversations", version: 1, conversations: state.conversations }, null, 1)],
    { type: "application/json" });
  const a = el("a");
  a.href = URL.createObjectURL(blob);
  a.download = `kecil-chats-${new Date().toISOString().slice(0, 10)}.json`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

async function importConversations(file) {
  try {
    const parsed = JSON.parse(await file.text());
    const imported = validConversations(Array.isArray(parsed) ? parsed : parsed.conversations);
    if (!imported.length) throw new Error("it holds no conversations");
    const ids = new Set(state.conversations.map((c) => c.id));
    for (const c of imported) if (ids.has(c.id)) c.id = newId();
    state.conversations = [...imported, ...state.conversations];
    state.current = imported[0].id;
    save();
    render();
    notice("");
  } catch (error) {
    notice(`Could not import ${file.name}: ${error.message}. Import a file that kecil exported.`);
  }
}

// --- tabs (the WAI-ARIA tabs pattern: one Tab stop, the chosen tab; arrows, Home and End move) ----
const tabs = () => [...document.querySelectorAll("[role=tab]")];

function selectTab(id, focus = false) {
  for (const tab of tabs()) {
    const chosen = tab.getAttribute("aria-controls") === id;
    tab.setAttribute("aria-selected", String(chosen));
    tab.tabIndex = chosen ? 0 : -1;
    $(tab.getAttribute("aria-controls")).hidden = !chosen;
    if (chosen && focus) tab.focus();
  }
  document.dispatchEvent(new CustomEvent("kecil:tab", { detail: id }));
}

function tabKeys(event) {
  const all = tabs();
  const at = all.indexOf(event.target);
  const to = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: all.length - 1 }[event.key];
  if (at < 0 || to === undefined || event.altKey || event.ctrlKey || event.metaKey) return;
  event.preventDefault();
  selectTab(all[(to + all.length) % all.length].getAttribute("aria-controls"), true);  // wraps at both ends
}

// --- wiring ---------------------------------------------------------------------------------------
function init() {
  const settings = loadSettings();
  if (settings.system !== undefined) $("system").value = settings.system;
  if (settings.temperature !== undefined) $("temperature").value = settings.temperature;
  if (settings.maxTokens !== undefined) $("max-tokens").value = settings.maxTokens;
  for (const id of ["model", "system", "temperature", "max-tokens"]) $(id).addEventListener("change", saveSettings);

  initKeyDialog();
  for (const tab of tabs()) tab.addEventListener("click", () => selectTab(tab.getAttribute("aria-controls")));
  document.querySelector("[role=tablist]").addEventListener("keydown", tabKeys);
  $("new-chat").addEventListener("click", () => { if (!isBusy()) newConversation(); });
  $("export").addEventListener("click", exportConversations);
  $("import").addEventListener("change", (e) => { if (e.target.files[0]) importConversations(e.target.files[0]); e.target.value = ""; });
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("prompt").value;
    if (!text.trim() || isBusy()) return;
    if (!current()) newConversation();
    current().messages.push({ role: "user", content: text, meta: {} });
    $("prompt").value = "";
    generate();
  });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  $("stop").addEventListener("click", stop);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && isBusy()) { e.preventDefault(); stop(); } });

  load();
  render();
  initDocs();
  initStatus();
  loadModels().catch((error) => notice(`Could not list the models: ${error.message}`));
  document.body.dataset.ready = "true";
}

init();
