"""Start the service: the models named on the command line, checked, then uvicorn on the application."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spinelab.errors import InputError
from spinelab.serve.app import ModelSpec, Service, create_app

__all__ = ["model_specs", "build_service", "serve"]


def model_specs(paths: Sequence[str | Path]) -> list[ModelSpec]:
    """One ``ModelSpec`` per run folder or package, named after its folder (``name-2``, ``name-3`` when two
    folders share a name).

    The server process only checks that each is a folder with a ``config.yaml``: reading the config fully
    (``tasks.catalog.run_route``) imports torch, which only the worker processes need (about 0.7 GB and 4 s
    less per server); a worker that cannot load its model says why on ``/health`` and ``/v1/models``.

    Raises:
        InputError: a path is not a folder with a ``config.yaml`` (checked before any worker starts).
    """
    specs: list[ModelSpec] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise InputError(path, "not a run folder or model package (no such folder)")
        if not (path / "config.yaml").is_file():
            raise InputError(path, "not a run folder or model package (no config.yaml)")
        name, n = path.resolve().name, 2
        while any(s.name == name for s in specs):
            name, n = f"{path.resolve().name}-{n}", n + 1
        specs.append(ModelSpec(name=name, path=path.resolve()))
    if not specs:
        raise InputError(".", "give at least one run folder or model package to serve")
    return specs


def build_service(models: Sequence[str | Path], *, jobs_dir: str | Path | None = None,
                  max_upload_mb: float = 2048, max_unpacked_mb: float = 4096, input_root: str | Path | None = None,
                  device: str | None = None, precision: str | None = None, threads: int | None = None) -> Service:
    """The ``Service`` of ``models`` (not started: the application's lifespan starts it)."""
    if input_root is not None and not Path(input_root).is_dir():
        raise InputError(input_root, "the input root (--input-root) is not a folder")
    options: dict[str, Any] = {k: v for k, v in (("device", device), ("precision", precision), ("threads", threads))
                               if v is not None}
    return Service(models=model_specs(models), jobs_dir=Path(jobs_dir) if jobs_dir is not None else None,
                   max_upload_bytes=int(max_upload_mb * 1e6), max_unpacked_bytes=int(max_unpacked_mb * 1e6),
                   input_root=Path(input_root).resolve() if input_root is not None else None, options=options)


def serve(models: Sequence[str | Path], *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          **settings: Any) -> None:
    """Serve ``models`` on ``host:port`` until interrupted (``settings``: ``build_service``'s)."""
    import uvicorn

    app = create_app(build_service(models, **settings))
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10)
