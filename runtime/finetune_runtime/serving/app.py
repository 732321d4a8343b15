"""The FastAPI app: OpenAI routes, health, readiness, metrics, bearer auth.

The model loads in a background thread after the server starts listening, so
`/healthz` answers at once and `/readyz` turns 200 only when the engine runs (what a
Kubernetes readiness probe wants). `/v1/*` answers 503 until then.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from finetune_runtime import contract
from finetune_runtime.serving import responses as r
from finetune_runtime.serving.engine import Engine, EngineStats
from finetune_runtime.serving.generation import Generation
from finetune_runtime.serving.loading import LoadedModel
from finetune_runtime.serving.metrics import ServeMetrics
from finetune_runtime.serving.sampling import SamplingParams
from finetune_runtime.serving.schemas import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    parse_request,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024
ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models")


@dataclass
class ServeOptions:
    max_batch: int = 32
    max_queue: int = 256
    api_key: str | None = None


@dataclass
class ServerState:
    """What the routes share: the loaded model and its engine (None while loading)."""

    options: ServeOptions
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    loaded: LoadedModel | None = None
    engine: Engine | None = None
    load_error: Exception | None = None
    on_load_error: Callable[[Exception], None] | None = None

    def ready(self) -> tuple[LoadedModel, Engine]:
        if self.loaded is None or self.engine is None:
            raise ApiError(503, "the model is still loading; retry shortly", kind="server_error")
        return self.loaded, self.engine

    def load(self, loader: Callable[[], LoadedModel]) -> None:
        try:
            loaded = loader()
            self.engine = Engine(
                loaded.model,
                eos_ids=loaded.eos_ids,
                pad_id=loaded.pad_id,
                max_batch=self.options.max_batch,
                max_queue=self.options.max_queue,
                peft=loaded.peft,
                on_step=self._observe,
            ).start()
            self.loaded = loaded
            log.info("serving %s", ", ".join(loaded.names))
        except Exception as exc:
            log.error("could not load the model: %s", exc)
            self.load_error = exc
            if self.on_load_error:
                self.on_load_error(exc)

    def _observe(self, stats: EngineStats) -> None:
        self.metrics.queue_depth.set(stats.waiting)
        self.metrics.running.set(stats.running)


def create_app(loader: Callable[[], LoadedModel], state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        threading.Thread(target=state.load, args=(loader,), daemon=True).start()
        yield
        if state.engine is not None:
            state.engine.stop()

    app = FastAPI(title="finetune serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    _install_errors(app, state)

    @app.get(contract.HEALTH_PATH)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(contract.READY_PATH)
    async def readyz() -> Response:
        if state.engine is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        loaded, _ = state.ready()
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "finetune"}
            for name in loaded.names
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        loaded, engine = state.ready()
        req = parse_request(CompletionRequest, await request.body())
        adapter = _adapter_for(loaded, req.model)
        prompts = [_prompt_ids(loaded, p) for p in req.prompts()]
        return await _answer(request, state, req, prompts, adapter, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        loaded, engine = state.ready()
        req = parse_request(ChatCompletionRequest, await request.body())
        adapter = _adapter_for(loaded, req.model)
        prompts = [_chat_ids(loaded, req)]
        return await _answer(request, state, req, prompts, adapter, chat=True)

    return app


def _install_errors(app: FastAPI, state: ServerState) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        err = ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")
        return JSONResponse(err.body(), status_code=exc.status_code)

    app.add_middleware(GuardMiddleware, state=state)


class GuardMiddleware:
    """Auth, body size and request counting for /v1/*, as plain ASGI: Starlette's
    BaseHTTPMiddleware would hide the client's disconnect from the routes."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        code = {"status": 500}

        async def counting_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                code["status"] = message["status"]
            await send(message)

        refused = _refuse(Request(scope), self.state.options.api_key)
        try:
            if refused is not None:
                await refused(scope, receive, counting_send)
            else:
                await self.app(scope, receive, counting_send)
        finally:
            endpoint = path if path in ENDPOINTS else "other"  # bounded label values
            self.state.metrics.requests.labels(endpoint, str(code["status"])).inc()


def _refuse(request: Request, api_key: str | None) -> Response | None:
    """401 without the right bearer token; 413 for an oversized body; else None."""
    if api_key is not None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), api_key.encode()
        ):
            err = ApiError(
                401,
                "missing or invalid bearer token",
                kind="authentication_error",
                code="invalid_api_key",
            )
            return JSONResponse(err.body(), status_code=401)
    length = request.headers.get("content-length", "0")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        err = ApiError(413, f"request body over {MAX_BODY_BYTES} bytes", code="body_too_large")
        return JSONResponse(err.body(), status_code=413)
    return None


def _adapter_for(loaded: LoadedModel, model: str) -> str | None:
    if model not in loaded.names:  # a dict lookup: a name never reaches the filesystem
        raise ApiError(
            404,
            f"model: {model!r} is not served here; GET /v1/models lists "
            f"{', '.join(map(repr, loaded.names))}",
            param="model",
            code="model_not_found",
        )
    return loaded.names[model]


def _prompt_ids(loaded: LoadedModel, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        ids = list(loaded.tokenizer(prompt)["input_ids"])
    else:
        vocab = loaded.model.get_input_embeddings().weight.shape[0]
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise ApiError(
                400,
                f"prompt: token id {bad[0]} is outside the vocabulary (0-{vocab - 1})",
                param="prompt",
            )
        ids = list(prompt)
    if not ids:
        raise ApiError(400, "prompt: empty after tokenization", param="prompt")
    return ids


def _chat_ids(loaded: LoadedModel, req: ChatCompletionRequest) -> list[int]:
    tokenizer = loaded.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise ApiError(400, "this model's tokenizer has no chat template; use /v1/completions")
    try:
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except ValueError as exc:
        raise ApiError(400, f"messages: {exc}", param="messages") from None
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


async def _answer(
    request: Request,
    state: ServerState,
    req: CompletionRequest | ChatCompletionRequest,
    prompts: list[list[int]],
    adapter: str | None,
    *,
    chat: bool,
) -> Response:
    loaded, engine = state.ready()
    limit = req.token_limit if isinstance(req, ChatCompletionRequest) else req.max_tokens
    max_tokens = _check_lengths(prompts, limit, loaded.context_len)
    wants_logprobs = bool(req.logprobs) if chat else req.logprobs is not None
    k = (req.top_logprobs or 0) if isinstance(req, ChatCompletionRequest) else (req.logprobs or 0)

    def params(index: int) -> SamplingParams:
        seed = None if req.seed is None else req.seed + index
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=seed,
            logprobs=k if wants_logprobs else None,
            ignore_eos=req.ignore_eos,
        )

    endpoint = request.url.path
    gen = Generation(
        engine,
        loaded.tokenizer,
        prompts,
        params,
        n=req.n,
        stops=req.stops,
        adapter=adapter,
        metrics=state.metrics,
        endpoint=endpoint,
    )
    if req.stream:
        events = r.stream_events(
            gen,
            req.model,
            loaded.tokenizer,
            chat=chat,
            logprobs=wants_logprobs,
            usage=req.include_usage,
        )
        return StreamingResponse(events, media_type="text/event-stream")
    texts = await r.collect(gen, request.is_disconnected)
    build = r.chat_body if chat else r.completion_body
    return JSONResponse(build(gen, texts, req.model, loaded.tokenizer, wants_logprobs))


def _check_lengths(prompts: list[list[int]], max_tokens: int | None, context: int) -> int:
    """max_tokens to use for every prompt; 400 when a prompt does not fit the context."""
    longest = max(len(p) for p in prompts)
    if longest >= context:
        raise ApiError(
            400,
            f"prompt: {longest} tokens; this model's context is {context} tokens",
            param="prompt",
            code="context_length_exceeded",
        )
    room = context - longest
    if max_tokens is None:
        return room
    if max_tokens > room:
        raise ApiError(
            400,
            f"max_tokens: {max_tokens} plus the {longest}-token prompt exceeds this model's "
            f"context of {context} tokens (at most {room})",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return max_tokens
