"""``spinelab pacs``: a DICOM node next to a PACS (``listen``) and a C-MOVE pull of one study (``pull``).

A thin shell over ``spinelab.pacs.node.PacsNode``; settings come from ``-c pacs.yaml`` and the options (an
option given wins). Errors go through the CLI's one mapping (``SpinelabError``: one line, exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["pacs_app"]

pacs_app = typer.Typer(help="spinelab as a DICOM node: receive studies, predict them, send DICOM SEG and SR back.",
                       no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})

_Config = Annotated[Path | None, typer.Option("--config", "-c", help="PACS settings YAML (see README).")]
_AE = Annotated[str | None, typer.Option("--ae-title", help="This node's AE title [default: SPINELAB].")]
_Host = Annotated[str | None, typer.Option(help="Address to listen on [default: 127.0.0.1].")]
_Port = Annotated[int | None, typer.Option(help="Port to listen on [default: 11112].", min=0, max=65535)]
_Task = Annotated[str | None, typer.Option(help="cervical or lumbar [default: cervical].")]
_Model = Annotated[list[Path] | None, typer.Option("--model", help="Run folder(s) to predict with.")]
_Work = Annotated[Path | None, typer.Option(help="Received studies and results [default: pacs_work].")]
_Quiet = Annotated[float | None, typer.Option(help="Seconds without a new instance after which a study is "
                                                   "complete [default: 10].")]
_RemoteAE = Annotated[str | None, typer.Option("--remote-ae", help="AE title of the PACS to send to / pull from.")]
_RemoteHost = Annotated[str | None, typer.Option(help="Host of the PACS.")]
_RemotePort = Annotated[int | None, typer.Option(help="Port of the PACS.", min=1, max=65535)]
_Device = Annotated[str | None, typer.Option(help="cpu, cuda or auto [default: the run's infer.device].")]


def _config(config: Path | None, **options: Any) -> Any:
    from spinelab.pacs.config import load_pacs_config

    remote = {"remote_ae_title": options.pop("remote_ae"), "remote_host": options.pop("remote_host"),
              "remote_port": options.pop("remote_port")}
    if options.get("model") == []:
        options["model"] = None
    return load_pacs_config(config, **options, **remote)


@pacs_app.command("listen")
def listen(config: _Config = None, ae_title: _AE = None, host: _Host = None, port: _Port = None, task: _Task = None,
           model: _Model = None, work_dir: _Work = None, quiet_seconds: _Quiet = None, remote_ae: _RemoteAE = None,
           remote_host: _RemoteHost = None, remote_port: _RemotePort = None, device: _Device = None) -> None:
    """Listen as a DICOM node (C-STORE SCP): predict each study once no instance arrived for the quiet period,
    and C-STORE its SEG and SR to the remote node. Ctrl-C stops."""
    from spinelab.pacs.node import PacsNode

    cfg = _config(config, ae_title=ae_title, host=host, port=port, task=task, model=model, work_dir=work_dir,
                  quiet_seconds=quiet_seconds, remote_ae=remote_ae, remote_host=remote_host,
                  remote_port=remote_port, device=device)
    node = PacsNode(cfg)
    node.predictor  # noqa: B018 - load the models before accepting studies: a bad run folder fails now
    node.start()
    typer.echo(f"listening as {cfg.ae_title} on {cfg.host}:{node.port}; results in {node.results_dir}")
    node.wait()


@pacs_app.command("pull")
def pull(study_uid: Annotated[str, typer.Argument(help="StudyInstanceUID to move from the remote node.")],
         config: _Config = None, ae_title: _AE = None, host: _Host = None, port: _Port = None, task: _Task = None,
         model: _Model = None, work_dir: _Work = None, remote_ae: _RemoteAE = None,
         remote_host: _RemoteHost = None, remote_port: _RemotePort = None, device: _Device = None) -> None:
    """C-MOVE one study from the remote node to this node, predict it, and C-STORE its SEG and SR back (the
    remote node must know this node's AE title, host and port as a modality)."""
    from spinelab.pacs.node import PacsNode

    cfg = _config(config, ae_title=ae_title, host=host, port=port, task=task, model=model, work_dir=work_dir,
                  remote_ae=remote_ae, remote_host=remote_host, remote_port=remote_port, device=device)
    node = PacsNode(cfg)
    node.predictor  # noqa: B018 - fail on a bad run folder before asking the PACS for anything
    try:
        files = node.pull(study_uid)
    finally:
        node.stop()
    for f in files:
        typer.echo(str(f))
    if not files:
        raise typer.Exit(code=3)
