"""What a route does before escalating, over real HTTP: every message of a chat request is redacted with one mapping, a loopback server records every byte it gets, and the reply comes back restored."""

from __future__ import annotations

import http.server
import json
import re
import threading
import urllib.request

from kecil.route.redact import Placeholders, RedactConfig, redact, restore
from tests.route.private_messages import MESSAGES, leaks


class _Recorder(http.server.BaseHTTPRequestHandler):
    """An OpenAI-style endpoint that keeps the bytes it receives and answers by quoting every
    placeholder it was sent, written the ways models write them back."""

    received: list[bytes] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(body)
        sent = " ".join(m["content"] for m in json.loads(body)["messages"])
        tags = sorted(set(re.findall(r"<([A-Z_]+_\d+)>", sent)))
        words = [("<{}>", "{}", "[{}]", "&lt;{}&gt;")[i % 4].format(tag) for i, tag in enumerate(tags)]
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": "Noted: " + ", ".join(words)}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):  # the test's output stays quiet
        pass


def test_no_private_value_reaches_the_server_and_the_reply_is_restored():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Recorder.received = []
    try:
        all_names = tuple(n for _, names, _ in MESSAGES for n in names)
        private = [v for _, _, values in MESSAGES for v in values]
        mapping = Placeholders()
        config = RedactConfig(names=all_names)
        system = redact("You help the bank's staff. The customer is Rachel Goh (S1234567D).", config, mapping)
        messages = [{"role": "system", "content": system.text}]
        messages += [{"role": "user", "content": redact(text, config, mapping).text} for text, _, _ in MESSAGES]
        request = urllib.request.Request(f"http://127.0.0.1:{server.server_port}/v1/chat/completions",
                                         data=json.dumps({"model": "remote", "messages": messages}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            reply = json.loads(response.read())["choices"][0]["message"]["content"]
    finally:
        server.shutdown()
        server.server_close()
    received = b"".join(_Recorder.received)
    assert received and leaks(received, private) == []
    # the system prompt and the first message name the same person and NRIC: one placeholder each
    assert messages[0]["content"].count("<PERSON_1>") == 1 and "<PERSON_1>" in messages[1]["content"]
    assert "<NRIC_1>" in messages[1]["content"]
    shown = restore(reply, mapping)
    assert all(value in shown for value in private), shown
    assert "PERSON_" not in shown and "NRIC_" not in shown and "&lt;" not in shown
