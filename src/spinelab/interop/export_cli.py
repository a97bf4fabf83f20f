"""``spinelab export``: datasets for other tools (nnU-Net v2), a thin shell over ``spinelab.api.export_nnunet``,
and model packages (``export model``, ``export onnx``: ``spinelab.deploy``).

Kept beside the exporter so ``spinelab.cli`` only registers the group; errors go through the group's one
mapping (``SpinelabError``: one line, exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["export_app"]

export_app = typer.Typer(help="Datasets for other tools (nnU-Net v2 raw datasets and their plans) and model "
                              "packages (model, onnx).",
                         no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})


def _parse(value: str | None, kind: type, option: str) -> list | None:
    if value is None:
        return None
    try:
        items = [kind(v) for v in value.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{option} needs three comma-separated numbers, got {value!r}") from None
    if len(items) != 3:
        raise typer.BadParameter(f"{option} needs three comma-separated numbers (z,y,x), got {value!r}")
    return items


@export_app.command("nnunet")
def export_nnunet(
    dataset_dir: Annotated[Path, typer.Argument(help="RSNA 2022 layout dataset (train_images/, segmentations/).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="nnU-Net raw folder ($nnUNet_raw).")],
    task: Annotated[str, typer.Option(help="vertebrae (C1-C7 from the segmentations) or fractures (the box "
                                           "pseudo-masks in derived/fracture_masks).")] = "vertebrae",
    dataset_id: Annotated[int | None, typer.Option(help="nnU-Net dataset id 1-999 [default: 101 / 201].")] = None,
    name: Annotated[str | None, typer.Option(help="Dataset name [default: CervicalVertebrae / CervicalFractures].")
                    ] = None,
    spacing: Annotated[str | None, typer.Option(help="Plans override spacing z,y,x in mm [default: the seed's].")
                       ] = None,
    patch: Annotated[str | None, typer.Option(help="Plans override patch z,y,x in voxels [default: the seed's].")
                     ] = None,
    folds_file: Annotated[Path | None, typer.Option(help="Folds CSV [default: DATASET_DIR/folds.csv, else made].")
                          ] = None,
    k: Annotated[int, typer.Option("--k", min=2, help="Folds to make when there is no folds CSV.")] = 5,
    cache: Annotated[Path | None, typer.Option(help="Volume cache to read instead of DICOM.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing DatasetNNN_Name.")] = False,
) -> None:
    """Write an nnU-Net v2 raw dataset (imagesTr, labelsTr, dataset.json, splits_final.json, a plans override)
    and print the nnU-Net commands that plan, train and predict it."""
    from spinelab.api import export_nnunet as api_export

    result = api_export(dataset_dir, out, task=task, dataset_id=dataset_id, name=name,
                        spacing=_parse(spacing, float, "--spacing"), patch_size=_parse(patch, int, "--patch"),
                        folds_file=folds_file, k=k, cache_dir=cache, overwrite=overwrite)
    typer.echo(f"wrote {result.folder} ({len(result.cases)} cases, {result.folds} folds, "
               f"{len(result.skipped)} left out)")
    typer.echo("next:")
    for line in result.commands:
        typer.echo(f"  {line}")


@export_app.command("nnunet-plans")
def export_nnunet_plans(
    dataset_folder: Annotated[Path, typer.Argument(help="An exported RAW_DIR/DatasetNNN_Name.")],
    preprocessed: Annotated[Path, typer.Option(help="Its $nnUNet_preprocessed/DatasetNNN_Name (after "
                                                    "nnUNetv2_plan_and_preprocess).")],
) -> None:
    """Add the export's 3d_fullres_spinelab configuration to nnUNetPlans.json and copy splits_final.json."""
    from spinelab.interop.nnunet import install_plans

    typer.echo(f"wrote {install_plans(dataset_folder, preprocessed)}")


@export_app.command("model")
def export_model(
    run_dir: Annotated[Path, typer.Argument(help="Run folder written by `spinelab train` (any route).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Package folder to write.")],
    folds: Annotated[str | None, typer.Option(help="Comma-separated folds to ship [default: the predictor's, "
                                                   "every trained fold].")] = None,
    licence: Annotated[str | None, typer.Option(help="Licence of the weights (model card and manifest).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing package folder.")] = False,
) -> None:
    """Write a self-describing model package: the inference config, the chosen folds' model.pt, the prior and
    the route's fitted files, MODEL_CARD.md and manifest.json (SHA-256 of every file). `predict` and `segment`
    take it wherever they take a run folder, and refuse it when a file was changed."""
    from spinelab.deploy.package import export_model as write_package

    chosen = None
    if folds is not None:
        if not all(f.strip().isdigit() for f in folds.split(",")):
            raise typer.BadParameter(f"--folds needs comma-separated fold numbers (0,1), got {folds!r}")
        chosen = [int(f) for f in folds.split(",")]
    typer.echo(f"wrote {write_package(run_dir, out, folds=chosen, licence=licence, overwrite=overwrite)}")


@export_app.command("onnx")
def export_onnx(
    package: Annotated[Path, typer.Argument(help="A package written by `spinelab export model`.")],
    opset: Annotated[int, typer.Option(min=17, help="ONNX opset.")] = 17,
    all_networks: Annotated[bool, typer.Option(
        "--all-networks", help="Use onnxruntime for every 2D network, not only where it was faster.")] = False,
    bf16: Annotated[bool, typer.Option("--bf16/--no-bf16", help="Also run the bf16 parity check.")] = True,
) -> None:
    """Export the package's 2D networks to ONNX (PKG/onnx/), check them against torch on a fixed synthetic
    study (largest probability difference under 1e-3) and time them; record the checks, and a bf16 parity
    check, in manifest.json. Exit 3 when the ONNX parity check fails (`--runtime onnx` then refuses)."""
    from spinelab.deploy.onnx_export import export_onnx as run_export

    section = run_export(package, opset=opset, only_faster=not all_networks, bf16=bf16)
    for n in section["networks"]:
        typer.echo(f"{n['file']}: max |onnx - torch| {n['max_abs_diff']:.2e}, torch {n['torch_s']:.3f} s, "
                   f"onnxruntime {n['onnx_s']:.3f} s, {'used' if n['use'] else 'not used (not faster)'}")
    p = section["parity"]
    if p["passed"] is None:
        typer.echo(f"onnx: nothing exported ({p['note']}: 3D networks stay on torch)")
    else:
        typer.echo(f"onnx parity: max probability difference {p['max_prob_diff']:.2e} "
                   f"({'passed' if p['passed'] else 'FAILED'}, tolerance {p['tolerance']})")
    if "bf16" in section:
        b = section["bf16"]
        typer.echo(f"bf16 parity: max probability difference {b['max_prob_diff']:.2e} "
                   f"({'passed' if b['passed'] else 'failed'}, tolerance {b['tolerance']})")
    if p["passed"] is False:
        raise typer.Exit(code=3)
