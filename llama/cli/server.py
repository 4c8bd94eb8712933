"""The OpenAI-compatible server: `python -m llama.server [--ckpt_dir DIR] [--port 8000] ...`.

Loads the model (the bundled demo model without --ckpt_dir), starts the engine, binds the socket
(127.0.0.1 unless --host says otherwise) and prints the URL, then serves /v1/chat/completions,
/v1/completions, /v1/models and /health until SIGINT or SIGTERM: then it stops accepting, lets the
requests in flight finish (up to --shutdown_timeout seconds), and exits 0. The API key, when set
(--api_key or env LLAMA_API_KEY), is required as `Authorization: Bearer KEY` on /v1/*.
Under `torchrun --nproc_per_node N -m llama.server ...` rank 0 holds the socket and schedules;
every rank runs the steps.
"""

import contextlib
import logging
import os
import signal
import socket
import threading
from dataclasses import replace
from pathlib import Path
from typing import Optional

from .. import demo
from .flags import Flag
from .frontend import FLAGS, build_generator
from .run import run

logger = logging.getLogger(__name__)

API_KEY_ENV = "LLAMA_API_KEY"
DEMO_MODEL_ID = "llama-demo"


def _graceful_server(config):
    """A uvicorn Server whose SIGINT/SIGTERM end the serving (in-flight requests first) and leave the
    process to exit normally (uvicorn itself re-raises the signal after shutting down)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server(config)


def serve(app, host: str, port: int, shutdown_timeout: int, model_id: str) -> None:
    import uvicorn

    sock = socket.create_server((host, port))  # bound before the URL is printed (port 0: any free port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {model_id} at http://{shown}:{bound}/v1 (OpenAI-compatible; Ctrl-C stops)", flush=True)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=shutdown_timeout)
    _graceful_server(config).run(sockets=[sock])


def main(
    ckpt_dir: Optional[str] = None,
    tokenizer_path: Optional[str] = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: Optional[str] = None,
    max_batch_size: int = 4,
    max_seq_len: Optional[int] = None,
    quantize: Optional[str] = None,
    dtype: Optional[str] = None,
    device: Optional[str] = None,
    model_name: Optional[str] = None,
    max_queue: int = 64,
    shutdown_timeout: int = 30,
    kv_cache_tokens: Optional[int] = None,
    kv_cache_dtype: Optional[str] = None,
):
    from ..decoding.engine import Engine
    from ..runtime.group import is_main_process
    from ..serve.app import create_app

    using_demo = ckpt_dir is None and tokenizer_path is None
    if max_seq_len is None:
        max_seq_len = demo.MAX_SEQ_LEN if using_demo else 2048
    sizes = dict(max_seq_len=max_seq_len, max_batch_size=max_batch_size, kv_cache_tokens=kv_cache_tokens)
    generator = build_generator(ckpt_dir, tokenizer_path, 1.0, 1.0, None, device=device, dtype=dtype,
                                quantize=quantize, kv_cache_dtype=kv_cache_dtype, **sizes)  # fmt: skip
    if not is_main_process():
        # Rank 0 holds the socket and decides when to stop (a Ctrl-C reaches every rank of the
        # terminal's process group); this rank runs its steps until rank 0 releases it, or is gone.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        Engine.follow(generator)
        return
    engine = Engine(generator, max_queue=max_queue)
    model_id = model_name or (DEMO_MODEL_ID if using_demo else Path(str(ckpt_dir)).resolve().name)
    app = create_app(generator, engine, model_id, api_key or os.environ.get(API_KEY_ENV) or None)
    try:
        serve(app, host, port, shutdown_timeout, model_id)
    finally:
        engine.close(drain=False, timeout=shutdown_timeout)
    logger.info("server stopped")


SERVER_FLAGS = {
    **FLAGS,
    "host": Flag("the address to listen on (0.0.0.0: every interface)", "HOST"),
    "port": Flag("the TCP port to listen on (0: any free port, printed)", "PORT"),
    "api_key": Flag(
        "require this key from clients (Authorization: Bearer KEY)", "KEY", default=f"env {API_KEY_ENV}, else none"
    ),  # fmt: skip
    "max_batch_size": Flag("sequences generated at once: the engine's slots", "N"),
    "max_seq_len": replace(FLAGS["max_seq_len"], default=f"{demo.MAX_SEQ_LEN} for the demo model, else 2048"),
    "model_name": Flag("the model id clients name", "NAME", default=f"the checkpoint folder's name ({DEMO_MODEL_ID})"),
    "kv_cache_tokens": Flag(
        "positions the slots' shared KV cache may hold; a request that does not fit yet waits",
        "N",
        default="max_batch_size x max_seq_len",
    ),  # fmt: skip
    "max_queue": Flag("requests that may wait for a slot; more are answered 429", "N"),
    "shutdown_timeout": Flag("seconds in-flight requests get to finish after SIGINT/SIGTERM", "S"),
}


def cli() -> None:
    """`python -m llama.server`."""
    run(main, {k: v for k, v in SERVER_FLAGS.items() if k not in ("temperature", "top_p", "max_gen_len")},
        prog="python -m llama.server")  # fmt: skip
