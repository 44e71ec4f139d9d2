"""`modelmint train RECIPE --data PATH [--add-data SOURCE]`: train, evaluate, export and
register a version."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from modelmint.cli.context import console, open_database, settings
from modelmint.training.catalog import RECIPES, recipe_class
from modelmint.training.params import parse_params

__all__ = ["train_command"]


class _Bars:
    """Rich progress bars, one per stage, fed by the recipes' progress callback."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int, metrics: Mapping[str, float]) -> None:
        shown = "  ".join(f"{k}={v:.4g}" for k, v in list(metrics.items())[:4])
        description = f"{stage:<10} {shown}"
        task = self._tasks.get(stage)
        if task is None:
            task = self._progress.add_task(description, total=total or None)
            self._tasks[stage] = task
        self._progress.update(task, completed=done, total=total or None, description=description)


def train_command(
    recipe: Annotated[str, typer.Argument(help=f"One of: {', '.join(RECIPES)}.")],
    data: Annotated[
        str,
        typer.Option(help="CSV/JSONL file, image folder, sklearn:digits or dataset:NAME@VERSION."),
    ],
    add_data: Annotated[
        list[str] | None,
        typer.Option(
            "--add-data",
            help="More training rows, e.g. dataset:NAME@VERSION built from feedback: they join "
            "the training part only, so the test rows stay those of --data (repeatable).",
        ),
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Hyperparameter KEY=VALUE.")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Registered model name (default: the recipe's).")
    ] = None,
    cv: Annotated[int, typer.Option(help="K-fold cross-validation on the training rows.")] = 0,
    tune: Annotated[int, typer.Option(help="Optuna trials (with pruning) before fitting.")] = 0,
    quantize: Annotated[bool, typer.Option(help="Measure dynamic int8 quantization.")] = False,
    prune: Annotated[
        float | None, typer.Option(help="Measure magnitude pruning to this sparsity (0-1).")
    ] = None,
    keep_compressed: Annotated[
        bool, typer.Option(help="Export the quantized/pruned network instead.")
    ] = False,
    onnx: Annotated[bool, typer.Option(help="Also export ONNX, with a parity check.")] = False,
    from_version: Annotated[
        str | None,
        typer.Option("--from", help="Continue from a registered NAME@VERSION (transfer)."),
    ] = None,
    register: Annotated[
        bool, typer.Option(help="Register the result as a new model version.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Train a model with a recipe, report its metrics and register it as a new version."""
    # Imported here: torch and friends load only for the commands that train.
    from modelmint.feedback.datasets import dataset_resolver
    from modelmint.training.runs import TrainRequest, train

    config = settings()
    cls = recipe_class(recipe)
    request = TrainRequest(
        recipe=recipe,
        data=data,
        params=parse_params(cls, param or []),
        name=name,
        cv=cv,
        tune=tune,
        quantize=quantize,
        prune=prune,
        keep_compressed=keep_compressed,
        onnx=onnx,
        parent=from_version,
        register=register,
        add_data=tuple(add_data or ()),
    )
    # Under torchrun only rank 0 talks: it alone evaluates, exports and registers.
    main_rank = os.environ.get("RANK", "0") == "0"
    needs_registry = any(s.startswith("dataset:") for s in (data, *(add_data or ())))
    database = (
        open_database(config)
        if main_rank and (register or from_version or needs_registry)
        else None
    )
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=as_json,
            disable=as_json or not main_rank,
        ) as bars:
            result = train(
                request,
                home=config.home,
                database=database,
                progress=_Bars(bars),
                resolve_data=dataset_resolver(database) if database is not None else None,
            )
    finally:
        if database is not None:
            database.dispose()
    if not main_rank:
        return
    if as_json:
        typer.echo(
            orjson.dumps(
                {
                    "name": result.name,
                    "version": result.version,
                    "artifact_dir": str(result.artifact_dir) if result.artifact_dir else None,
                    "world_size": result.world_size,
                    "report": orjson.loads(result.report.to_json()),
                }
            ).decode()
        )
        return
    table = Table("metric", "value", title=f"{result.name} test metrics")
    for key, value in result.report.metrics.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            table.add_row(key, f"{value:.4f}")
    console.print(table)
    if add_data:
        sizes = result.report.split_sizes
        console.print(
            f"Trained on {sizes['train']} rows, {sizes.get('added to train', 0)} of them added "
            f"from {', '.join(add_data)}; tested on the {sizes['test']} test rows of {data}."
        )
    if result.version is not None:
        console.print(
            f"Registered [bold]{result.name}@{result.version}[/] in {result.artifact_dir}. "
            f"Serve it: modelmint deploy {result.name}@{result.version}"
        )
