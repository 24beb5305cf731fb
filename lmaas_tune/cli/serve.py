"""``lmaas-tune serve``: expose a model over HTTP for remote fits (a shell over :mod:`lmaas_tune.server`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app, err, handled
from .display import Display
from .loading import open_with_notes
from .options import BackendOptions, CompileOpt, DeviceOpt, DtypeOpt, FusedOpt, KindOpt, ModelOpt


@app.command("serve")
@handled
def serve_cmd(
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    model_kind: KindOpt = None,
    fused: FusedOpt = False,
    compile_layers: CompileOpt = False,
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port, printed at start).")] = 8080,
    token_file: Annotated[Optional[Path], typer.Option("--token-file", help="File whose first line is the bearer token clients must send.")] = None,
    token_env: Annotated[Optional[str], typer.Option("--token-env", help="Environment variable holding the bearer token.")] = None,
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", help="Largest request body accepted (413 beyond).")] = 32.0,
    max_prompts: Annotated[int, typer.Option("--max-prompts", help="Candidates one request may carry.")] = 256,
    batch_window_ms: Annotated[float, typer.Option("--batch-window-ms", help="How long a request waits for others to share its forward pass.")] = 5.0,
    max_batch_prompts: Annotated[int, typer.Option("--max-batch-prompts", help="Candidates in one shared forward pass.")] = 64,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Candidates waiting or running before requests get 503 + Retry-After.")] = 1024,
) -> None:
    """Serve a model over HTTP, for `fit --backend remote --endpoint URL` (stop with Ctrl-C: in-flight requests finish)."""
    from lmaas_tune.server import ServerConfig, resolve_token, serve  # the HTTP server loads only to serve

    config = ServerConfig(
        host=host, port=port, token=resolve_token(token_file, token_env), max_body_bytes=int(max_body_mb * 1024 * 1024),
        max_prompts_per_request=max_prompts, batch_window_s=batch_window_ms / 1000.0,
        max_batch_prompts=max_batch_prompts, max_queue_prompts=max_queue,
    )
    settings = BackendOptions(model=model, device=device, dtype=dtype, model_kind=model_kind, fused=fused,
                              compile_layers=compile_layers).settings()
    display = Display(err, quiet=False)

    async def run() -> None:
        be = open_with_notes(settings, display)
        async with be:
            def ready(url: str) -> None:
                auth = "bearer token required" if config.token else "no token (loopback only)"
                err.print(f"serving {be.info.model_id} on {url} ({auth}); Ctrl-C to stop", highlight=False, soft_wrap=True)

            await serve(be, config, on_ready=ready)
        err.print("stopped", highlight=False)

    asyncio.run(run())
