"""Running the app: `serve(config)` is what `kecil serve` calls; it blocks until stopped."""

from __future__ import annotations

import logging
from collections.abc import Callable

from kecil.serve.config import ServeConfig


def serve(config: ServeConfig, *, on_start: Callable[[str], None] = lambda url: None) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM, which finish requests in flight first)."""
    import uvicorn

    from kecil.serve.app import create_app

    app = create_app(config)
    logging.getLogger("kecil.serve").setLevel(logging.INFO)
    # No access log: it would record every caller's address and path in a second place; the
    # audit log is the one record of who called what.
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=10))
    host = f"[{config.host}]" if ":" in config.host else config.host
    original_startup = server.startup

    async def startup(sockets=None):
        await original_startup(sockets)
        if server.started:
            port = server.servers[0].sockets[0].getsockname()[1] if server.servers else config.port
            on_start(f"http://{host}:{port}/v1")

    server.startup = startup
    server.run()
