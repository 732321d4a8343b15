"""`finetune serve MODEL_OR_CONFIG`: an OpenAI-compatible API on a trained model.

Not to be confused with `finetune_runtime.progress.server`, rank 0's training-progress endpoint.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from finetune_runtime import contract

API_KEY_ENV = contract.ENV_SERVE_API_KEY
DEFAULT_PORT = 8000


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a trained model over an OpenAI-compatible HTTP API",
        description="Serve a merged model directory, an adapter directory (on its base model), "
        "or the outputs of a training config at /v1/completions and /v1/chat/completions. "
        f"Binds 127.0.0.1 unless --host says otherwise. With ${API_KEY_ENV} or --api-key-file "
        "set, /v1/* requires `Authorization: Bearer KEY`.",
    )
    parser.add_argument(
        "target", metavar="MODEL_OR_CONFIG", help="model dir, adapter dir or config"
    )
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also serve this adapter on the base model, as model NAME (repeatable)",
    )
    parser.add_argument("--served-model-name", help="the `model` name clients use")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--api-key-file", help=f"read the bearer token from this file ({API_KEY_ENV} also works)"
    )
    parser.add_argument("--max-batch", type=int, default=32, help="sequences decoded together")
    parser.add_argument(
        "--max-queue", type=int, default=256, help="sequences waiting before 429 (bounded memory)"
    )
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.set_defaults(func=main)


def api_key(file: str | None, env: dict[str, str] | None = None) -> str | None:
    """The bearer token: --api-key-file, else $FINETUNE_SERVE_API_KEY, else None (no auth)."""
    from finetune_runtime.errors import ConfigError

    env = dict(os.environ) if env is None else env
    if file:
        try:
            key = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"--api-key-file {file}: {exc.strerror or exc}") from None
        if not key:
            raise ConfigError(f"--api-key-file {file}: the file is empty")
        return key
    return env.get(API_KEY_ENV, "").strip() or None


def main(args: argparse.Namespace) -> int:
    import uvicorn

    from finetune_runtime.errors import ConfigError, FinetuneError, ModelError
    from finetune_runtime.serving.app import ServeOptions, ServerState, create_app
    from finetune_runtime.serving.loading import load, resolve_source

    for flag, value in (("--max-batch", args.max_batch), ("--max-queue", args.max_queue)):
        if value < 1:
            raise ConfigError(f"{flag}: must be at least 1, got {value}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: {args.port} is not a port number (0-65535)")
    source = resolve_source(args.target, args.adapter, args.served_model_name)
    options = ServeOptions(args.max_batch, args.max_queue, api_key(args.api_key_file))
    state = ServerState(options)
    app = create_app(lambda: load(source, args.dtype), state)
    server = uvicorn.Server(
        uvicorn.Config(app, host=args.host, port=args.port, log_level="info", access_log=False)
    )

    def stop(_exc: Exception) -> None:
        server.should_exit = True

    state.on_load_error = stop
    server.run()
    failed = state.load_error
    if isinstance(failed, FinetuneError):
        raise failed
    if failed is not None:
        raise ModelError(f"cannot load {args.target}: {type(failed).__name__}: {failed}")
    return 0
