"""The web page of `kecil serve`, in a real browser: Debian's Chromium driven by Playwright against a
real server on loopback with the bundled model. Every request the page makes is recorded and must
stay on the server's own address. Screenshots go to tests/artefacts/web/ (ignored by git)."""

from __future__ import annotations

import json
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright  # a test dependency (pyproject's [test] extra)

from kecil.route.routefile import RouteFile, Tier, save_route
from tests.route.endpoint import Endpoint
from tests.route.test_router import EMAIL, QUESTION, QUICK, UNSURE
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
    # Two routes, both unsure of every answer (so each escalates): "desk" stays on this machine,
    # "outside" sends its question, redacted, to a loopback stand-in for a remote endpoint.
    remote = Endpoint("ok")  # echoes what it got: the reply holds the placeholder, the user sees the address
    desk = RouteFile("desk", (Tier("small", model="smollm2-135m", threshold=0.9), Tier("large", model="smollm2-135m", threshold=0.9)),
                     combiner=UNSURE, confidence=QUICK, max_tokens=8)
    outside = RouteFile("outside", (Tier("small", model="smollm2-135m", threshold=0.9),
                                    Tier("cloud", url=remote.url, remote_model="big", timeout=30, retries=0)),
                        allow_remote=True, combiner=UNSURE, confidence=QUICK, max_tokens=8)
    s = Server(tmp, "--context", "1024", "--parallel", "2", "--reports", str(reports),
               "--route", str(save_route(desk, tmp / "desk.route.json")), "--route", str(save_route(outside, tmp / "outside.route.json")))
    s.remote = remote
    yield s
    s.stop()
    remote.close()


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
        self.context = browser.new_context(**{"viewport": {"width": 1200, "height": 800}, **kw})
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
    expect(page.locator("#model option")).to_have_count(3)  # the model, and the two routes
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
    settings(page, max_tokens=8, temperature=0)  # each tier's answer: short, the test is about the line under it
    send(page, "What is the capital of France?")
    wait_idle(page)
    meta = page.locator(".msg.assistant .meta").last
    expect(meta.locator(".badge.routed")).to_have_text("routed to large (escalated)")
    expect(meta.locator(".badge.local")).to_have_text("nothing left this machine")
    assert page.locator(".msg.assistant .body").last.inner_text().strip()


def test_a_reply_from_a_remote_tier_says_where_it_went_and_what_was_redacted(server, visit):
    page = visit.open()
    page.select_option("#model", "route:outside")
    settings(page, max_tokens=8, temperature=0)
    sent_before = len(server.remote.received)
    send(page, QUESTION)
    wait_idle(page)
    meta = page.locator(".msg.assistant .meta").last
    expect(meta.locator(".badge.routed")).to_have_text("routed to cloud (escalated)")
    expect(meta.locator(".badge.redacted")).to_have_text(re.compile(r"^redacted before leaving for cloud: .*\b1 EMAIL\b"))
    # The endpoint got the question without the address; the page shows the reply with it put back.
    assert len(server.remote.received) == sent_before + 1
    out = b"".join(server.remote.received[sent_before:]).decode()
    assert "capital of France" in out and EMAIL not in out and "siti.rahman" not in out
    expect(page.locator(".msg.assistant .body").last).to_contain_text(EMAIL)
    # Nothing private in the question (a new chat: a chat sends its whole history): it leaves as written.
    page.click("#new-chat")
    send(page, "What is two plus two?")
    wait_idle(page)
    meta = page.locator(".msg.assistant .meta").last
    expect(meta.locator(".badge.redacted")).to_have_text("sent to cloud as written: nothing found to redact")
    assert "two plus two" in server.remote.received[-1].decode()


TABS = {"tab-chat": "chat", "tab-docs": "docs", "tab-status": "status"}


def test_the_tabs_follow_the_aria_pattern_from_the_keyboard_alone(server, visit):
    page = visit.open()
    where = "() => ({id: document.activeElement.id, role: document.activeElement.getAttribute('role'), " \
            "panel: document.activeElement.closest('[role=tabpanel]')?.id ?? null})"
    page.keyboard.press("Tab")  # the page's first stop is the chosen tab
    assert page.evaluate(where)["id"] == "tab-chat"
    moves = [("ArrowRight", "tab-docs"), ("ArrowRight", "tab-status"), ("ArrowRight", "tab-chat"),  # wraps
             ("ArrowLeft", "tab-status"), ("Home", "tab-chat"), ("End", "tab-status"), ("ArrowLeft", "tab-docs")]
    for key, tab in moves:
        page.keyboard.press(key)
        assert page.evaluate(where)["id"] == tab, key
        for other, panel in TABS.items():
            chosen = other == tab
            assert page.get_attribute("#" + other, "aria-selected") == str(chosen).lower()
            assert page.get_attribute("#" + other, "tabindex") == ("0" if chosen else "-1")  # roving: one stop
            assert page.is_visible("#" + panel) == chosen
        # Tab leaves the tab list (no other tab is a stop) and reaches the chosen panel; Shift+Tab comes back.
        for _ in range(4):
            page.keyboard.press("Tab")
            now = page.evaluate(where)
            assert now["role"] != "tab", now
            if now["panel"]:
                break
        assert now["panel"] == TABS[tab], now
        while page.evaluate(where)["role"] != "tab":
            page.keyboard.press("Shift+Tab")
        assert page.evaluate(where)["id"] == tab


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
    shot(page, "status-report.png")
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


SAMPLE = {"conversations": [{"id": "look", "title": "A conversation with everything a reply can hold, and a long title", "messages": [
    {"role": "user", "content": "Show me a list, a table of numbers, some code and a long unbroken line."},
    {"role": "assistant", "content": "Here they are:\n\n- **one** item\n- `two` items\n\n> a quoted line\n\n"
     "```python\ndef greet(name: str) -> str:\n    # a comment\n    return f\"hello {name}\"  # a long line that runs on "
     "and on past the width of a phone screen\n```\n\nhttps://example.org/" + "a" * 120 + "\n\n1. first\n2. second",
     "meta": {"model": "route:outside", "usage": {"prompt_tokens": 31, "completion_tokens": 75}, "tps": 21.4, "ttft": 180,
              "routed_to": "cloud", "route": {"escalated": True, "redacted": True, "redacted_counts": {"EMAIL": 1, "PERSON": 2},
                                              "sent_to": "cloud", "reason": "escalated to cloud"}}}]}]}
SIZES = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1280, "height": 800}}


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_tab_fits_a_phone_and_a_desktop_in_light_and_dark(server, browser, scheme, tmp_path):
    stored = tmp_path / "look.json"
    stored.write_text(json.dumps(SAMPLE))
    for size, viewport in SIZES.items():
        v = Visit(browser, server, viewport=viewport, color_scheme=scheme)
        page = v.open()
        page.set_input_files("#import", str(stored))
        expect(page.locator(".msg.assistant .badge.redacted")).to_have_text("redacted before leaving for cloud: 1 EMAIL, 2 PERSON")
        assert page.evaluate("() => matchMedia('(prefers-color-scheme: dark)').matches") == (scheme == "dark")
        for tab in TABS:
            page.click("#" + tab)
            if tab == "tab-status":  # every column of the models' table shows, with no scrolling inside its box
                expect(page.locator("#metrics-table tbody tr").first).to_be_visible()
                box = "document.getElementById('metrics-table').parentElement"
                assert page.evaluate(f"() => {box}.scrollWidth - {box}.clientWidth") <= 0, (size, scheme)
            # Nothing wider than the window: the page never scrolls sideways (code and tables scroll in their box).
            wide = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert wide <= 0, (size, tab, wide)
            for control in ("#" + tab, "#model"):
                box = page.locator(control).bounding_box()
                assert box and 0 <= box["x"] and box["x"] + box["width"] <= viewport["width"], (size, tab, control, box)
            shot(page, f"{size}-{scheme}-{TABS[tab]}.png")
        v.check_offline()
        v.close()


def upload_limit_server(tmp_path, *limits: str) -> Server:
    return Server(tmp_path, "--context", "512", "--no-embeddings", "--no-preload", *limits, ready=False)


def test_uploads_stop_at_the_servers_limits_and_the_page_says_which(browser, tmp_path, kecil_home):
    folder = kecil_home / "kb" / "uploads" / "capped"
    s = upload_limit_server(tmp_path, "--max-upload", "2kB", "--max-upload-files", "3")
    try:
        def put(name: str, size: int):
            return httpx.put(f"{s.url}/kecil/kb/capped/files/{name}", content=b"x" * size)

        assert put("a.txt", 800).status_code == 200 and put("b.txt", 800).status_code == 200
        over = put("c.txt", 800)  # 2,400 bytes in all: over 2 kB
        assert over.status_code == 413 and over.json()["error"]["code"] == "upload_limit"
        message = over.json()["error"]["message"]
        assert "--max-upload 2000" in message and "capped" in message and "larger --max-upload" in message
        assert put("a.txt", 300).status_code == 200  # replacing a file counts its new size only: 1,100 bytes
        assert put("c.txt", 800).status_code == 200  # 1,900 bytes, 3 files
        full = put("d.txt", 1)
        assert full.status_code == 413 and "--max-upload-files 3" in full.json()["error"]["message"]
        assert sorted(p.name for p in folder.iterdir()) == ["a.txt", "b.txt", "c.txt"]  # nothing refused was written
        # Uploads sent at the same moment are held to the limit too: two fit, whichever they are.
        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(lambda n: httpx.put(f"{s.url}/kecil/kb/raced/files/{n}.txt", content=b"x" * 800).status_code, range(6)))
        assert sorted(codes) == [200, 200, 413, 413, 413, 413]

        v = Visit(browser, s)
        page = v.open()
        page.click("#tab-docs")
        page.fill("#upload-kb", "capped")
        upload_by_drop(page, {"e.md": "more", "f.md": "and more"})
        refused = page.locator("#upload-error")
        expect(refused).to_contain_text("e.md and the 1 file(s) after it were not uploaded")
        expect(refused).to_contain_text("--max-upload-files 3")
        expect(page.locator("#upload-state")).to_have_text("No file was uploaded.")
        shot(page, "upload-limit.png")
        v.check_offline()
        v.close()
    finally:
        s.stop()

    s = upload_limit_server(tmp_path, "--min-free-disk", "1000TB")  # more than any disk here has free
    try:
        r = httpx.put(f"{s.url}/kecil/kb/roomless/files/a.txt", content=b"x" * 100)
        assert r.status_code == 507 and r.json()["error"]["code"] == "insufficient_storage"
        message = r.json()["error"]["message"]
        assert re.search(r"has [0-9.]+ [KMGT]iB free", message) and "smaller --min-free-disk" in message
        assert not [p for p in (kecil_home / "kb" / "uploads").rglob("*") if "roomless" in str(p) and p.is_file()]
        v = Visit(browser, s)
        page = v.open()
        page.click("#tab-docs")
        page.fill("#upload-kb", "roomless")
        upload_by_drop(page, {"g.md": "text"})
        expect(page.locator("#upload-error")).to_contain_text("g.md was not uploaded: the disk holding the knowledge bases has")
        expect(page.locator("#upload-error")).to_contain_text("--min-free-disk")
        v.check_offline()
        v.close()
    finally:
        s.stop()
