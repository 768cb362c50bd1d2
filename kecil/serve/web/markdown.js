// Model output is untrusted: this renders a safe subset of Markdown by building DOM nodes, never
// by parsing HTML. Text goes in through textContent, so `<img onerror=...>` in a reply stays
// text; links keep only http(s) and same-site targets; images are shown as their alt text.
// Hand-written (not a vendored parser + sanitiser) because the subset a chat needs is small and
// a builder that cannot emit raw HTML needs no sanitiser to be right.

const INLINE = new RegExp([
  "(`+)([^`][\\s\\S]*?)\\1(?!`)",                       // 1,2: `code`
  "!\\[([^\\]\\n]*)\\]\\(([^)\\s]*)[^)]*\\)",            // 3,4: ![alt](src): no images, the alt text only
  "\\[([^\\]\\n]+)\\]\\(([^)\\s]+)(?:\\s+\"[^\"]*\")?\\)", // 5,6: [text](url)
  "\\*\\*(?=\\S)([\\s\\S]*?\\S)\\*\\*",                 // 7: **strong**
  "(?<![\\w\\\\])__(?=\\S)([\\s\\S]*?\\S)__(?!\\w)",  // 8: __strong__ (not inside a word: snake__case)
  "\\*(?=[^\\s*])([^*\\n]*?[^\\s*])\\*",                // 9: *em*
  "~~(?=\\S)([^~\\n]*?\\S)~~",                          // 10: ~~del~~
  "(https?:\\/\\/[^\\s<>()\\[\\]]*[^\\s<>()\\[\\].,;:!?'\"])", // 11: a bare URL
  "\\[(\\d{1,3})\\]",                                   // 12: [n], a citation when the caller gives citations
].join("|"), "g");

const KEYWORDS = new Set(("abstract and as async await break case catch class const continue def del do elif else " +
  "enum except export extends false final finally fn for from func function go if impl import in interface is " +
  "lambda let match mod mut new nil none null not or package pass private protected pub public raise return " +
  "self static struct super switch this throw true try type typeof use var void while with yield True False None").split(" "));
const CODE_TOKENS = /(\/\/[^\n]*|#[^\n]*|\/\*[\s\S]*?\*\/|--[^\n]*)|("(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'|`(?:\\.|[^`\\])*`)|(\b\d[\d_.]*(?:e[+-]?\d+)?\b|\b0x[\da-f]+\b)|([A-Za-z_$][\w$]*)/gi;
const HASH_COMMENTS = new Set(["py", "python", "sh", "bash", "shell", "zsh", "yaml", "yml", "toml", "r", "ruby", "rb", "perl", "make", "makefile", "dockerfile", ""]);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** `url` when it is safe to link to (http, https, or a path on this server), else null. */
export function safeUrl(url) {
  const text = String(url || "").trim();
  if (!text) return null;
  let parsed;
  try {
    parsed = new URL(text, window.location.href);  // the browser's own reading: "java\tscript:" is javascript:
  } catch {
    return null;
  }
  return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
}

/** Append `text`'s inline Markdown to `parent`. `options.cite(n)` makes the node of citation [n] (or null). */
export function renderInline(text, parent, options = {}) {
  let last = 0;
  const add = (s) => { if (s) parent.append(document.createTextNode(s)); };
  for (const m of text.matchAll(INLINE)) {
    add(text.slice(last, m.index));
    last = m.index + m[0].length;
    if (m[2] !== undefined) {
      parent.append(el("code", "", m[2]));
    } else if (m[3] !== undefined) {
      parent.append(el("span", "md-image", m[3] ? `[image: ${m[3]}]` : "[image]"));
    } else if (m[5] !== undefined) {
      const href = safeUrl(m[6]);
      if (href) {
        const a = el("a");
        a.href = href;
        a.rel = "noopener noreferrer nofollow";
        a.target = "_blank";
        renderInline(m[5], a, options);
        parent.append(a);
      } else {  // an unsafe link keeps its words, not its target
        const span = el("span", "md-unsafe-link");
        span.title = "link removed: only http and https links are kept";
        renderInline(m[5], span, options);
        parent.append(span);
      }
    } else if (m[7] !== undefined || m[8] !== undefined) {
      const strong = el("strong");
      renderInline(m[7] ?? m[8], strong, options);
      parent.append(strong);
    } else if (m[9] !== undefined) {
      const em = el("em");
      renderInline(m[9], em, options);
      parent.append(em);
    } else if (m[10] !== undefined) {
      const del = el("del");
      renderInline(m[10], del, options);
      parent.append(del);
    } else if (m[11] !== undefined) {
      const a = el("a", "", m[11]);
      a.href = safeUrl(m[11]);
      a.rel = "noopener noreferrer nofollow";
      a.target = "_blank";
      parent.append(a);
    } else if (m[12] !== undefined) {
      const node = options.cite ? options.cite(Number(m[12])) : null;
      parent.append(node || document.createTextNode(m[0]));
    }
  }
  add(text.slice(last));
}

function inlineLines(lines, parent, options) {
  lines.forEach((line, i) => {
    if (i) parent.append(el("br"));
    renderInline(line, parent, options);
  });
}

/** A code block with light syntax colouring: comments, strings, numbers and common keywords. */
export function codeBlock(code, language) {
  const lang = (language || "").toLowerCase();
  const figure = el("div", "code-block");
  const bar = el("div", "code-bar");
  bar.append(el("span", "code-lang", lang || "text"));
  const copy = el("button", "copy", "Copy");
  copy.type = "button";
  copy.setAttribute("aria-label", "Copy the code");
  copy.addEventListener("click", () => {
    navigator.clipboard?.writeText(code).then(() => { copy.textContent = "Copied"; }, () => { copy.textContent = "Copy failed"; });
  });
  bar.append(copy);
  const pre = el("pre");
  const out = el("code");
  if (lang) out.dataset.lang = lang;
  let last = 0;
  for (const m of code.matchAll(CODE_TOKENS)) {
    if (m[1] !== undefined && m[1].startsWith("#") && !HASH_COMMENTS.has(lang)) continue;  // C's #include is no comment
    if (m[1] !== undefined && m[1].startsWith("--") && !["sql", "lua", "haskell", "hs"].includes(lang)) continue;
    out.append(document.createTextNode(code.slice(last, m.index)));
    last = m.index + m[0].length;
    const kind = m[1] !== undefined ? "tok-comment" : m[2] !== undefined ? "tok-string" : m[3] !== undefined ? "tok-number"
      : KEYWORDS.has(m[4]) ? "tok-keyword" : "";
    out.append(kind ? el("span", kind, m[0]) : document.createTextNode(m[0]));
  }
  out.append(document.createTextNode(code.slice(last)));
  pre.append(out);
  figure.append(bar, pre);
  return figure;
}

const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const BLOCK_START = /^\s*(```|~~~|#{1,6}\s|>|([-*+]|\d{1,9}[.)])\s+)/;

/** A DocumentFragment of `text` rendered as Markdown (see the module comment for what is kept). */
export function renderMarkdown(text, options = {}) {
  const root = document.createDocumentFragment();
  const lines = String(text || "").replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(/^\s*(`{3,}|~{3,})\s*([\w+#.-]*)/);
    if (fence) {
      const body = [];
      i++;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i++;  // the closing fence (or the end of a reply still streaming)
      root.append(codeBlock(body.join("\n"), fence[2]));
      continue;
    }
    if (!line.trim()) { i++; continue; }
    const heading = line.match(/^\s*(#{1,6})\s+(.*?)\s*#*\s*$/);
    if (heading) {
      const h = el(`h${Math.min(6, heading[1].length + 2)}`);  // h3..h6: a reply sits under the page's own headings
      renderInline(heading[2], h, options);
      root.append(h);
      i++;
      continue;
    }
    if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) { root.append(el("hr")); i++; continue; }
    if (/^\s*>/.test(line)) {
      const quoted = [];
      while (i < lines.length && /^\s*>/.test(lines[i])) quoted.push(lines[i++].replace(/^\s*>\s?/, ""));
      const quote = el("blockquote");
      quote.append(renderMarkdown(quoted.join("\n"), options));
      root.append(quote);
      continue;
    }
    const item = line.match(LIST_ITEM);
    if (item) {
      const ordered = /\d/.test(item[2]);
      const list = el(ordered ? "ol" : "ul");
      if (ordered && parseInt(item[2], 10) !== 1) list.start = parseInt(item[2], 10);
      let current = null;
      while (i < lines.length) {
        const next = lines[i].match(LIST_ITEM);
        if (next && /\d/.test(next[2]) === ordered) {
          current = el("li");
          renderInline(next[3], current, options);
          list.append(current);
        } else if (current && lines[i].trim() && /^\s+/.test(lines[i]) && !/^\s*(```|~~~)/.test(lines[i])) {
          current.append(el("br"));  // an indented line continues the item (nested lists stay flat)
          renderInline(lines[i].trim(), current, options);
        } else {
          break;
        }
        i++;
      }
      root.append(list);
      continue;
    }
    const paragraph = [];
    while (i < lines.length && lines[i].trim() && !(paragraph.length && BLOCK_START.test(lines[i]))) paragraph.push(lines[i++]);
    const p = el("p");
    inlineLines(paragraph, p, options);
    root.append(p);
  }
  return root;
}
