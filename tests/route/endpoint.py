"""A real OpenAI-compatible endpoint on loopback for the routing tests: it records every byte it
receives (headers and body) and answers as told — normally, slowly, with an error — or is down."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Endpoint:
    """`mode`: "ok" (answers `reply`, or echoes the last user message when it is None), "slow"
    (answers after `delay` seconds), "error" (HTTP 500). `received` holds each raw request."""

    def __init__(self, mode: str = "ok", reply: str | None = None, delay: float = 5.0):
        self.mode, self.reply, self.delay = mode, reply, delay
        self.received: list[bytes] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                endpoint.received.append(self.requestline.encode() + b"\r\n" + bytes(self.headers) + body)
                if endpoint.mode == "error":
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "boom"}}')
                    return
                if endpoint.mode == "slow":
                    time.sleep(endpoint.delay)
                messages = json.loads(body)["messages"]
                text = endpoint.reply if endpoint.reply is not None else "You said: " + messages[-1]["content"]
                payload = json.dumps({"id": "x", "object": "chat.completion", "model": "remote",
                                      "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up on a slow answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def everything(self) -> str:
        return b"".join(self.received).decode("utf-8", errors="replace")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port_url() -> str:
    """The URL of a loopback port nothing listens on: a down endpoint."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
