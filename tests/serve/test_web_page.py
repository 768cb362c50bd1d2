"""The web page of `kecil serve`, in a real browser: Debian's Chromium driven by Playwright against a
real server on loopback with the bundled model. Every request the page makes is recorded and must
stay on the server's own address. Screenshots go to tests/artefacts/web/ (ignored by git)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright  # a test dependency (pyproject's [test] extra)

from kecil.route.confidence import FEATURES
from tests.serve.test_server import Server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTEFACTS = Path(__file__).resolve().parents[1] / "artefacts" / "web"
WEB_DIR = Path(__file__).resolve().parents[2] / "kecil" / "serve" / "web"
KEY = "page-test-key-1234"
XSS = ('Look: <img src=x onerror="window.__pwned=1"> and <script>window.__pwned=2</script> '
       'and [a link](javascript:window.__pwned=3) and [tabbed](java\tscript:window.__pwned=4) '
       'and ![pic](http://127.0.0.1:9/x.png) and [fine](https://example.org/doc)')
HANDBOOK = {  # canteen.txt goes in a subfolder
    "history.md": "# History\n\nThe Zorblat Institute was founded in 1987 in Penang by Dr. Amina Rahman.\n\n"
                  "It began as a small library of tide charts.\n",
    "canteen.txt": "The canteen of the Zorblat Institute serves laksa every Thursday.\n\nBreakfast starts at 7 am.\n",
    "empty.txt": "",
    "photo.xyz": "not a document",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, kecil_home):
    reports = tmp_path_factory.mktemp("reports")
    (reports / "eval.html").write_text("<!doctype html><html><head><style>h1{color:#123}</style></head><body>"
                                       "<h1>kecil eval</h1><p>accuracy 41%</p>"
                                       "<script>document.body.dataset.ran = 'yes'</script></body></html>")
    tmp = tmp_path_factory.mktemp("serve")
    unsure = {"features": list(FEATURES), "weights": [0.0] * len(FEATURES), "bias": 0.0,
              "mean": [0.0] * len(FEATURES), "scale": [1.0] * len(FEATURES)}  # confidence 0.5: every answer escalates
    route = {"format": "kecil-route/1", "name": "desk", "max_tokens": 8, "allow_remote": False, "combiner": unsure,
             "confidence": {"samples": 1, "sample_tokens": 4, "self_check": False},
             "tiers": [{"name": "small", "model": "smollm2-135m", "threshold": 0.9},
                       {"name": "large", "model": "smollm2-135m", "threshold": 0.9}]}
    (tmp / "desk.route.json").write_text(json.dumps(route))
    s = Server(tmp, "--context", "1024", "--parallel", "2", "--reports", str(reports), "--route", str(tmp / "desk.route.json"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), "Debian's Chromium is missing: `make setup` installs it (apt-get install chromium)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


class Visit:
    """A browser context on one server: its page, and every URL it requested."""

    def __init__(self, browser, server, **kw):
        self.server = server
        self.context = browser.new_context(viewport={"width": 1200, "height": 800}, **kw)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self):
        self.page.goto(self.server.url + "/")
        self.page.wait_for_selector("body[data-ready=true]")
        return self.page

    def check_offline(self):
        """No request left the server's own loopback address, and no script failed."""
        assert self.requests
        for url in self.requests:
            parts = urlsplit(url)
            assert parts.scheme in ("blob", "data") or (parts.hostname, parts.port) == ("127.0.0.1", self.server.port), url
        assert not self.errors, self.errors

    def close(self):
        self.context.close()


@pytest.fixture
def visit(browser, server):
    v = Visit(browser, server)
    yield v
    v.check_offline()
    v.close()


def shot(page, name: str) -> None:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / name))


def wait_idle(page, timeout=60_000):
    page.wait_for_selector("body[data-busy=false]", timeout=timeout)


def settings(page, **values):
    """Open the settings (as a person would) and fill in `values`: system, temperature, max_tokens."""
    if page.locator("details.settings").get_attribute("open") is None:
        page.click("details.settings summary")
    for name, value in values.items():
        page.fill("#" + name.replace("_", "-"), str(value))


def send(page, text: str):
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def test_page_is_small_strict_and_served_without_a_build(server, visit):
    assert sum(p.stat().st_size for p in WEB_DIR.iterdir()) < 300_000
    r = httpx.get(server.url + "/")
    policy = r.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert httpx.get(server.url + "/web/../kecil/serve/page.py").status_code == 404
    assert httpx.get(server.url + "/web/nothing.js").status_code == 404
    page = visit.open()
    expect(page.locator("#model option")).to_have_count(2)  # the model, and the route
    assert page.locator("#model").input_value() == "smollm2-135m"
    # An inline script the page did not ship is refused by the policy.
    page.evaluate("() => { const s = document.createElement('script'); s.textContent = 'window.__inline = 1'; document.body.append(s); }")
    assert page.evaluate("() => window.__inline") is None


def test_chat_streams_stops_edits_and_keeps_conversations(server, visit):
    page = visit.open()
    settings(page, temperature=0, max_tokens=48)
    send(page, "What is the capital of France?")
    reply = page.locator(".msg.assistant .body").last
    wait_idle(page)
    assert "Paris" in reply.inner_text()
    meta = page.locator(".msg.assistant .meta").last.inner_text()
    assert "tokens/s" in meta and "reply tokens" in meta
    shot(page, "chat.png")

    # Stop mid-stream with Esc: the reply stays, marked stopped, and stops growing.
    settings(page, max_tokens=400)
    page.evaluate("""() => {
        window.__lengths = new Set();
        new MutationObserver(() => {
            const bodies = document.querySelectorAll('.msg.assistant .body');
            if (bodies.length === 2 && bodies[1].textContent.length) window.__lengths.add(bodies[1].textContent.length);
        }).observe(document.getElementById('messages'), { subtree: true, childList: true, characterData: true });
    }""")
    send(page, "Write a long story about a dragon who learns to bake bread.")
    reply = page.locator(".msg.assistant .body").last
    expect(reply).to_contain_text(" ", timeout=30_000)
    page.wait_for_function("() => document.querySelectorAll('.msg.assistant .body')[1].textContent.length > 40")
    # It came in pieces: every length the reply was drawn at, recorded in the page as it grew.
    page.wait_for_function("() => window.__lengths.size >= 3", timeout=30_000)
    page.keyboard.press("Escape")
    wait_idle(page, 5_000)
    stopped = reply.inner_text()
    time.sleep(0.5)
    assert reply.inner_text() == stopped and len(stopped) > 40
    assert "stopped" in page.locator(".msg.assistant .meta").last.inner_text()

    # Edit the first question and send it again: what came after it is replaced.
    settings(page, max_tokens=24)
    page.locator(".msg.user button.edit").first.click()
    page.fill(".msg textarea.edit", "What is the capital of Japan?")
    page.locator(".msg button.primary", has_text="Send").click()
    wait_idle(page)
    expect(page.locator(".msg")).to_have_count(2)
    assert "Japan" in page.locator(".msg.user").first.inner_text()
    first_answer = page.locator(".msg.assistant .body").last.inner_text()

    # A second conversation; switch back; reload: both kept, in this browser only.
    page.click("#new-chat")
    send(page, "Name three colours.")
    wait_idle(page)
    expect(page.locator("#conversation-list li")).to_have_count(2)
    page.locator("#conversation-list button.open", has_text="capital of Japan").click()
    expect(page.locator(".msg.user").first).to_contain_text("Japan")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("#conversation-list li")).to_have_count(2)
    assert page.locator(".msg.assistant .body").last.inner_text() == first_answer

    # Export as JSON: both conversations, their messages as shown.
    with page.expect_download() as download:
        page.click("#export")
    exported = json.loads(Path(download.value.path()).read_text())
    assert [len(c["messages"]) for c in exported["conversations"]] == [2, 2]
    japan = exported["conversations"][1]["messages"]
    assert japan[0]["content"] == "What is the capital of Japan?" and japan[1]["content"].strip()

    # Regenerate the last answer: one reply still, answered again.
    page.locator("button.regenerate").click()
    wait_idle(page)
    expect(page.locator(".msg.assistant")).to_have_count(1)


def test_a_routed_reply_says_who_answered(server, visit):
    page = visit.open()
    page.select_option("#model", "route:desk")
    send(page, "What is the capital of France?")
    wait_idle(page)
    meta = page.locator(".msg.assistant .meta").last
    expect(meta.locator(".badge.routed")).to_have_text("routed to large (escalated)")
    assert page.locator(".msg.assistant .body").last.inner_text().strip()


def test_untrusted_text_in_replies_runs_nothing(server, visit, tmp_path):
    page = visit.open()
    # A reply the model really gave, asked to repeat the attack, and the same text as a stored reply (import).
    settings(page, system="Repeat the user's message exactly, with nothing else.", max_tokens=120, temperature=0)
    send(page, XSS)
    wait_idle(page)
    exported = tmp_path / "chats.json"
    exported.write_text(json.dumps({"conversations": [{"id": "x", "title": "attack", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": XSS}]}]}))
    page.set_input_files("#import", str(exported))
    expect(page.locator("#conversation-list li")).to_have_count(2)
    body = page.locator(".msg.assistant .body").last
    expect(body).to_contain_text('<img src=x onerror="window.__pwned=1">')  # shown as text
    for conversation in page.locator("#conversation-list button.open").all():  # the real reply and the stored one
        conversation.click()
        messages = page.locator("#messages")
        expect(messages.locator(".msg")).to_have_count(2)
        assert messages.locator("img, script, iframe, object, embed").count() == 0
        hrefs = messages.locator("a").evaluate_all("links => links.map(a => a.href)")
        assert all(h.startswith(("http://", "https://")) for h in hrefs), hrefs
    page.locator("#conversation-list button.open", has_text="attack").click()
    assert page.locator("#messages a").evaluate_all("links => links.map(a => a.href)") == ["https://example.org/doc"]
    expect(page.locator("#messages .md-image")).to_have_text("[image: pic]")
    for link in page.locator("#messages .md-unsafe-link").all():
        link.click()
    time.sleep(0.2)
    assert page.evaluate("() => window.__pwned") is None


ATTACKS = [
    "[a](JaVaScRiPt:window.__pwned=1)", "[a]( javascript:window.__pwned=1)", "[a](javascript&colon;window.__pwned=1)",
    "[a](data:text/html,<script>window.__pwned=1</script>)", "[a](vbscript:msgbox)", "[a](file:///etc/passwd)",
    "<a href=\"javascript:window.__pwned=1\">x</a>", "<svg onload=window.__pwned=1>", "<iframe src=javascript:1>",
    "![x](javascript:window.__pwned=1)", "```html\n<img src=x onerror=window.__pwned=1>\n```",
    "**<img src=x onerror=window.__pwned=1>**", "> <script>window.__pwned=1</script>", "- [a](javascript:1)\n- `<b>`",
    "# <img src=x onerror=window.__pwned=1>", "[1] and [x](https://example.org/ok)",
]


def test_the_markdown_renderer_keeps_text_and_safe_links_only(server, visit):
    page = visit.open()
    tags = page.evaluate("""async (attacks) => {
        const { renderMarkdown } = await import('/web/markdown.js');
        const seen = { tags: new Set(), hrefs: [] };
        for (const text of attacks) {
            const box = document.createElement('div');
            box.append(renderMarkdown(text));
            document.body.append(box);
            for (const node of box.querySelectorAll('*')) {
                seen.tags.add(node.tagName.toLowerCase());
                for (const attr of node.attributes) if (/^on/i.test(attr.name)) seen.tags.add('handler:' + attr.name);
                if (node.href !== undefined) seen.hrefs.push(node.href);
            }
            box.remove();
        }
        return { tags: [...seen.tags], hrefs: seen.hrefs };
    }""", ATTACKS)
    allowed = {"p", "br", "strong", "em", "del", "code", "pre", "span", "a", "div", "button", "blockquote", "ul", "ol", "li",
               "h3", "h4", "h5", "h6", "hr"}
    assert set(tags["tags"]) <= allowed, set(tags["tags"]) - allowed
    # Only http(s) targets are kept ("javascript&colon;..." is no scheme: a relative path on the server, inert).
    assert all(urlsplit(h).scheme in ("http", "https") for h in tags["hrefs"]) and "https://example.org/ok" in tags["hrefs"]
    assert all(urlsplit(h).hostname in ("example.org", "127.0.0.1") for h in tags["hrefs"]), tags["hrefs"]
    assert page.evaluate("() => window.__pwned") is None


def upload_by_drop(page, files: dict[str, str]) -> None:
    """Drop `files` on the drop zone, as a person dragging them from a file manager."""
    page.evaluate("""files => {
        const dt = new DataTransfer();
        for (const [name, text] of Object.entries(files)) dt.items.add(new File([text], name));
        document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""", files)


def test_upload_then_a_cited_answer_opens_its_passage(server, visit, tmp_path):
    page = visit.open()
    page.click("#tab-docs")
    page.fill("#upload-kb", "web-handbook")
    folder = tmp_path / "handbook"
    for name, text in HANDBOOK.items():  # a folder with a subfolder, chosen as a person chooses one
        path = folder / ("policies" if name == "canteen.txt" else "") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    page.set_input_files("#folder", str(folder))
    expect(page.locator("#upload-state")).to_contain_text("2 added", timeout=60_000)
    skipped = page.locator("#upload-list .skipped").all_inner_texts()
    assert any("photo.xyz" in s and "not .xyz" in s for s in skipped), skipped
    assert any("empty.txt" in s for s in skipped), skipped
    assert "added handbook/policies/canteen.txt" in page.locator("#upload-list").inner_text()
    expect(page.locator("#kb")).to_have_value("web-handbook")
    # A file dropped on the page goes into the same knowledge base; what was there stays.
    upload_by_drop(page, {"leave.md": "Staff of the Zorblat Institute get 25 days of annual leave.\n"})
    expect(page.locator("#upload-state")).to_contain_text("1 added, 0 updated, 2 unchanged", timeout=60_000)

    page.fill("#question", "Who founded the Zorblat Institute?")
    page.press("#question", "Enter")
    source = page.locator("#answers .sources button", has_text="history.md")
    expect(source).to_be_visible(timeout=60_000)
    wait_idle(page)
    source.first.click()
    expect(page.locator("#citation-where")).to_contain_text("history.md, line")
    expect(page.locator("#citation-text")).to_contain_text("Amina Rahman")
    shot(page, "citation.png")
    # the numbered marker in the answer opens the same kind of view
    markers = page.locator("#answers button.cite")
    if markers.count():
        markers.first.click()
        expect(page.locator("#citation")).to_be_visible()

    # Files are written only inside the knowledge base's own folder.
    for bad in ("..%2F..%2Fevil.txt", "a/../../evil.txt", ".hidden.txt", "x%5C..%5Cevil.txt"):
        r = httpx.put(f"{server.url}/kecil/kb/web-handbook/files/{bad}", content=b"evil")
        assert r.status_code in (400, 404, 405), (bad, r.status_code, r.text)
    assert not list(Path(server.audit).parents[1].rglob("evil.txt"))
    assert httpx.put(f"{server.url}/kecil/kb/bad%20name/files/a.txt", content=b"x").status_code == 400
    inside_a_file = httpx.put(f"{server.url}/kecil/kb/web-handbook/files/leave.md/x.txt", content=b"x")  # leave.md is a file
    assert inside_a_file.status_code == 400 and "leave.md/x.txt" in inside_a_file.json()["error"]["message"]
    big = httpx.put(f"{server.url}/kecil/kb/web-handbook/files/big.txt", content=b"x" * 1_100_000)
    assert big.status_code == 413 and "--max-body" in big.json()["error"]["message"]


def test_status_shows_models_and_opens_reports_without_their_scripts(server, visit):
    page = visit.open()
    page.click("#tab-status")
    expect(page.locator("#metrics-table tbody tr", has_text="smollm2-135m")).to_contain_text("MiB")
    page.locator("#reports button", has_text="eval.html").click()
    frame = page.frame_locator("#report-view")
    expect(frame.locator("h1")).to_have_text("kecil eval")
    assert frame.locator("body").get_attribute("data-ran") is None


def test_a_server_with_a_key_asks_for_it_and_says_when_it_is_wrong(browser, tmp_path, kecil_home):
    s = Server(tmp_path, "--context", "512", "--no-embeddings", "--api-key", KEY, ready=False)
    try:
        assert httpx.get(s.url + "/").status_code == 200  # the page itself is public
        assert httpx.get(s.url + "/kecil/reports").status_code == 401
        v = Visit(browser, s)
        page = v.open()
        dialog = page.locator("#key-dialog")
        expect(dialog).to_be_visible()
        page.fill("#key-input", "not-the-right-key")
        page.press("#key-input", "Enter")
        expect(page.locator("#key-message")).to_contain_text("refused that key")
        page.fill("#key-input", KEY)
        page.press("#key-input", "Enter")
        expect(dialog).to_be_hidden()
        expect(page.locator("#model option")).to_have_count(1)
        assert page.evaluate("() => sessionStorage.getItem('kecil.apiKey')") == KEY
        assert page.evaluate("() => JSON.stringify(localStorage)").find(KEY) == -1  # kept for the session only
        v.check_offline()
        v.close()
    finally:
        s.stop()
