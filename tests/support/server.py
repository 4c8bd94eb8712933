"""A server on the engine, in this process: uvicorn in a thread on a free loopback port."""

import contextlib
import socket
import threading
import time
from typing import Iterator

import uvicorn

from llama.cli.server import _graceful_server
from llama.decoding.engine import Engine
from llama.serve.app import create_app


@contextlib.contextmanager
def running_server(generator, model_id: str = "test-model", max_queue: int = 64, **app_kwargs) -> Iterator[tuple]:
    """-> (base URL ending in /v1, the engine); the server and engine stop when the block ends."""
    engine = Engine(generator, max_queue=max_queue)
    app = create_app(generator, engine, model_id, **app_kwargs)
    sock = socket.create_server(("127.0.0.1", 0))
    server = _graceful_server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", engine
    finally:
        server.should_exit = True
        thread.join(30)
        engine.close(drain=False, timeout=30)
