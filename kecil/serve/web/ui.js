// What every part of the page shares: making elements, the notice line, the API key dialog, the
// one answer that may stream at a time (Stop and Esc end it), and the line under a reply.

import { ApiError, apiKey, setApiKey, streamChat } from "./api.js";
import { renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
let busy = null;  // the AbortController of the answer streaming now

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function notice(message) {
  const box = $("notice");
  box.textContent = message || "";
  box.hidden = !message;
}

// --- the API key ----------------------------------------------------------------------------
let keyWaiters = [];
/** Ask for the key (the server answered 401); resolves once a key is entered. */
export function askForKey(error) {
  const dialog = $("key-dialog");
  const message = $("key-message");
  const hadKey = !!apiKey();
  message.textContent = hadKey
    ? `The server refused that key: ${error?.message || "wrong API key"}. Check it and enter it again.`
    : "This server needs an API key. It is kept in this tab only, until you close it.";
  message.classList.toggle("error", hadKey);
  if (!dialog.open) dialog.showModal();
  $("key-input").focus();
  return new Promise((resolve) => keyWaiters.push(resolve));
}

/** Run `work()`; on 401 ask for the key and run it again. */
export async function withKey(work) {
  for (;;) {
    try {
      return await work();
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 401) throw error;
      await askForKey(error);
    }
  }
}

/** The line under a reply: tokens, speed, and who answered (a routed or redacted reply says so). */
export function metaLine(meta) {
  const line = el("div", "meta");
  const parts = [];
  if (meta.model) parts.push(meta.model);
  if (meta.usage) parts.push(`${meta.usage.prompt_tokens} prompt + ${meta.usage.completion_tokens} reply tokens`);
  else if (meta.pieces) parts.push(`about ${meta.pieces} reply tokens`);
  if (meta.tps) parts.push(`${meta.tps.toFixed(1)} tokens/s`);
  if (meta.ttft !== undefined) parts.push(`first token ${Math.round(meta.ttft)} ms`);
  if (meta.stopped) parts.push("stopped");
  else if (meta.finish === "length") parts.push("cut at max tokens");
  line.append(parts.join(" · "));
  const route = meta.route;
  if (meta.routed_to) {
    line.append(" ");
    const badge = el("span", "badge routed", `routed to ${meta.routed_to}${route?.escalated ? " (escalated)" : ""}`);
    if (route?.reason) badge.title = route.reason;
    line.append(badge);
  }
  // Whether anything left this machine, and whether redaction changed it before it did.
  if (route?.redacted) {
    const counts = Object.entries(route.redacted_counts || {}).map(([k, n]) => `${n} ${k}`).join(", ");
    line.append(el("span", "badge redacted", `redacted before leaving for ${route.sent_to}: ${counts || "yes"}`));
  } else if (route?.sent_to) {
    line.append(el("span", "badge redacted none", `sent to ${route.sent_to} as written: nothing found to redact`));
  } else if (route) {
    line.append(el("span", "badge local", "nothing left this machine"));
  }
  return line;
}

// --- streaming -----------------------------------------------------------------------------------
export const isBusy = () => busy !== null;

function setBusy(controller) {
  busy = controller;
  $("send").hidden = !!controller;
  $("stop").hidden = !controller;
  $("ask-button").disabled = !!controller;
  document.body.dataset.busy = controller ? "true" : "false";
}

/** Stream an answer to `body` into `node`'s `.body`; returns its meta. Used by chat and documents. */
export async function streamInto(body, message, node, render = (m) => renderMarkdown(m.content)) {
  const controller = new AbortController();
  setBusy(controller);
  const meta = message.meta;
  const started = performance.now();
  let first = null;
  let last = null;
  let frame = 0;
  const draw = () => {
    frame = 0;
    node.querySelector(".body").replaceChildren(render(message));
    const log = node.closest(".messages");
    if (log) log.scrollTop = log.scrollHeight;
  };
  try {
    await withKey(async () => {
      for await (const event of streamChat(body, controller.signal)) {
        for (const choice of event.choices || []) {
          if (choice.delta?.content) {
            last = performance.now();
            if (first === null) first = last;
            message.content += choice.delta.content;
            meta.pieces = (meta.pieces || 0) + 1;
            if (!frame) frame = requestAnimationFrame(draw);
          }
          if (choice.finish_reason) meta.finish = choice.finish_reason;
        }
        for (const field of ["citations", "answered", "withheld", "routed_to", "route"]) {
          if (event[field] !== undefined) meta[field] = event[field];
        }
        if (event.usage) meta.usage = event.usage;
      }
    });
  } catch (error) {
    if (error.name === "AbortError") meta.stopped = true;
    else meta.error = error.message;
  } finally {
    if (frame) cancelAnimationFrame(frame);
    if (first !== null) meta.ttft = first - started;
    const tokens = meta.usage?.completion_tokens ?? meta.pieces;
    if (first !== null && last > first && tokens > 1) meta.tps = (tokens - 1) / ((last - first) / 1000);
    setBusy(null);
  }
  return meta;
}

export function stop() {
  busy?.abort();
}

export function initKeyDialog() {
  $("key-form").addEventListener("submit", () => {
    setApiKey($("key-input").value.trim());
    $("key-input").value = "";
    const waiting = keyWaiters;
    keyWaiters = [];
    waiting.forEach((resolve) => resolve());
  });
  $("key-dialog").addEventListener("cancel", (e) => e.preventDefault());  // nothing works without it
}
