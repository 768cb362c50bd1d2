// Calls to the server: the page's own origin only. The API key, when the server needs one, is
// kept in sessionStorage: it is gone when the tab closes and never written anywhere else.

const KEY = "kecil.apiKey";

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const apiKey = () => sessionStorage.getItem(KEY) || "";
export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

function headers(extra) {
  const h = { ...extra };
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let code;
  try {
    const body = await response.json();
    message = body.error?.message || message;
    code = body.error?.code;
  } catch { /* not JSON: the status line says it */ }
  return new ApiError(response.status, message, code);
}

/** fetch `path` on this server; JSON or text back, an ApiError with the server's message on failure. */
export async function call(path, { method = "GET", json, body, signal, raw = false, contentType } = {}) {
  const init = { method, signal, headers: headers(json !== undefined ? { "Content-Type": "application/json" } : contentType ? { "Content-Type": contentType } : {}) };
  if (json !== undefined) init.body = JSON.stringify(json);
  else if (body !== undefined) init.body = body;
  const response = await fetch(path, init);
  if (!response.ok) throw await errorOf(response);
  if (raw) return response;
  return (response.headers.get("content-type") || "").includes("json") ? response.json() : response.text();
}

/** A streamed chat completion: yields each server-sent event's JSON until [DONE]. */
export async function* streamChat(body, signal) {
  const response = await call("/v1/chat/completions", {
    method: "POST", signal, raw: true, json: { ...body, stream: true, stream_options: { include_usage: true } },
  });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const parsed = JSON.parse(data);
        if (parsed.error) throw new ApiError(500, parsed.error.message, parsed.error.code);
        yield parsed;
      }
    }
  }
}
