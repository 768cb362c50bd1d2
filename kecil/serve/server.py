"""Running the app: `serve(config)` is what `kecil serve` calls; it blocks until stopped."""

from __future__ import annotations

import logging
from collections.abc import Callable

from kecil.serve.config import ServeConfig


GRACE_SECONDS = 10  # how long a stop waits for requests in flight before closing them


def serve(config: ServeConfig, *, on_start: Callable[[str], None] = lambda url: None,
          on_stop: Callable[[str], None] = lambda what: None) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM, which finish requests in flight first).
    `on_stop` hears when stopping begins ("stopping") and when it is done ("stopped")."""
    import uvicorn

    from kecil.serve.app import create_app

    app = create_app(config)
    logging.getLogger("kecil.serve").setLevel(logging.INFO)
    # No access log: it would record every caller's address and path in a second place; the
    # audit log is the one record of who called what.
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=GRACE_SECONDS))
    host = f"[{config.host}]" if ":" in config.host else config.host
    original_startup = server.startup

    async def startup(sockets=None):
        await original_startup(sockets)
        if server.started:
            port = server.servers[0].sockets[0].getsockname()[1] if server.servers else config.port
            on_start(f"http://{host}:{port}/v1")

    original_shutdown = server.shutdown

    async def shutdown(sockets=None):
        on_stop("stopping")
        await original_shutdown(sockets)

    server.startup, server.shutdown = startup, shutdown
    try:
        server.run()  # uvicorn raises the stopping signal again once shut down (KeyboardInterrupt for Ctrl-C)
    finally:
        if server.started:
            on_stop("stopped")
