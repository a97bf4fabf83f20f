"""``spinelab serve``: a thin shell over ``spinelab.serve.server.serve`` (registered in ``cli.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["serve"]


def serve(
    models: Annotated[list[Path], typer.Argument(help="Run folders or model packages to serve (any tasks).")],
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    jobs_dir: Annotated[Path | None, typer.Option(
        help="Folder for the jobs' inputs and results [default: a temporary folder, removed at exit].")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest zipped study accepted (MB).")] = 2048,
    max_unpacked_mb: Annotated[float, typer.Option(help="Largest unpacked study accepted (MB).")] = 4096,
    input_root: Annotated[Path | None, typer.Option(
        help="Also accept path= of a study under this folder, read in place [default: uploads only].")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or auto [default: each run's infer.device]")] = None,
    precision: Annotated[str | None, typer.Option(
        help="fp32, bf16 or fp16 [default: each run's infer.precision]")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads per model worker [default: torch's]")] = None,
) -> None:
    """Serve models over HTTP: POST /v1/jobs a zipped study, GET /v1/jobs/ID and its /result; the page at /,
    the OpenAPI page at /docs. One worker process per model loads it once and runs its jobs in order."""
    from spinelab.serve.server import serve as run

    run(models, host=host, port=port, jobs_dir=jobs_dir,
        max_upload_mb=max_upload_mb, max_unpacked_mb=max_unpacked_mb, input_root=input_root, device=device,
        precision=precision, threads=threads)
