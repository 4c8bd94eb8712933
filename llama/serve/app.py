"""The ASGI app: OpenAI's endpoints over one engine.

POST /v1/chat/completions, POST /v1/completions, GET /v1/models (one model), GET /health (public).
Every failure is answered in OpenAI's error shape and the server goes on serving: malformed JSON and
bad fields 400, a wrong or missing API key 401 (when one is set), an unknown model or path 404, a
body over the size limit 413, a full queue 429 (with Retry-After), a closed engine 503.
"""

import asyncio
import hmac
import json
import logging
import os
import time
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

from . import answers
from .errors import APIError
from .prepare import chat_job, check_model, completion_job

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 << 20
DISCONNECT_POLL_S = 0.25


def _error(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _body(request: Request, limit: int) -> dict:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body has {declared} bytes, more than this server's limit of {limit}",
                       code="request_too_large")  # fmt: skip
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > limit:
            raise APIError(413, f"the request body is over this server's limit of {limit} bytes",
                           code="request_too_large")  # fmt: skip
    try:
        body = json.loads(bytes(data) or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    return body


async def _until_done_or_gone(request: Request, task: "asyncio.Future", handles) -> dict:
    """The answer, or the requests cancelled if the client goes away first."""
    while True:
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if done:
            return task.result()
        if await request.is_disconnected():
            answers.cancel(handles)
            task.cancel()
            raise APIError(499, "the client closed the connection", code="client_closed")


class _KeyCheck:
    """Pure ASGI: every /v1 request must carry `Authorization: Bearer KEY`. (Starlette's
    BaseHTTPMiddleware would relay each streamed chunk through a memory stream and a task.)"""

    def __init__(self, app, api_key: str):
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = Headers(scope=scope).get("authorization", "")
            token = given[len("Bearer ") :] if given.startswith("Bearer ") else ""
            if not hmac.compare_digest(token.encode(), self.key):
                what = "Incorrect API key provided" if token else "Missing API key (Authorization: Bearer KEY)"
                return await _error(APIError(401, what, code="invalid_api_key"))(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(generator, engine, model_id: str, api_key: Optional[str] = None,
               max_body_bytes: int = MAX_BODY_BYTES):  # fmt: skip
    """The ASGI app for `engine` (serving `generator`'s model as `model_id`); api_key: required from
    clients when set."""
    app = FastAPI(title="llama", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())
    tokenizer = generator.tokenizer

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return _error(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code == 404:
            return _error(APIError(404, f"Unknown path: {request.method} {request.url.path}", code="not_found"))
        return _error(APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                               code="method_not_allowed" if exc.status_code == 405 else None))  # fmt: skip

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        log.exception("request %s %s failed", request.method, request.url.path)
        return _error(APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error"))

    def model_card() -> dict:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "llama"}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, "pid": os.getpid(), **engine.status()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str):
        check_model({"model": model}, model_id)
        return model_card()

    async def run(request: Request, make_job):
        body = await _body(request, max_body_bytes)
        check_model(body, model_id)
        job = make_job(body, generator)
        handles = answers.submit(job, engine, asyncio.get_running_loop())
        if job.common.stream:
            events = answers.stream(job, handles, tokenizer, model_id)
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        task = asyncio.ensure_future(answers.answer(job, handles, tokenizer, model_id))
        return await _until_done_or_gone(request, task, handles)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await run(request, chat_job)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await run(request, completion_job)

    return _KeyCheck(app, api_key) if api_key else app
