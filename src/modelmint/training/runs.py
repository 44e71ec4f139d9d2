"""One training run, from a data source to a registered, documented model version.

    load + check data -> split -> [add rows to train] -> [tune] -> fit (checkpointed)
    -> refit on train + val (recipes that can) -> evaluate on test
    -> [cross-validate] -> [compress] -> export -> [ONNX + parity] -> report + card
    -> register version N under var/artifacts/NAME/vN

Every stage reports progress through one callback (the CLI draws Rich bars from it)
and its time lands in the report. Under ``torchrun`` every rank fits its shard, and
only rank 0 evaluates, exports and registers.

Rows from ``add_data`` sources (e.g. a dataset built from feedback) join only the
training part: the validation and test parts are those of ``data`` alone, the same rows
a version trained on ``data`` with the same seed was tested on, so the two versions'
metrics compare like with like.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from modelmint.registry.versions import (
    TrainedVersion,
    VersionRef,
    next_version_number,
    parse_ref,
    register_trained,
    resolve,
)
from modelmint.storage.db import Database
from modelmint.training import distributed
from modelmint.training.catalog import recipe_class
from modelmint.training.recipe import DataError, Export, Progress, Recipe, Splits, silent
from modelmint.training.reports import RunReport
from modelmint.training.splits import input_key, source_hash

__all__ = ["DataResolver", "TrainRequest", "TrainResult", "add_training_rows", "train"]

# Turns a ``dataset:NAME@VERSION`` source into a file path (the datasets of the feedback
# loop); other sources pass through unchanged.
DataResolver = Callable[[str], str]

_INTENDED_USE = {
    "classification": "Assigns one of the labels seen in training to each input.",
    "recommendation": "Ranks catalogue items for a user from past ratings or interactions.",
    "chat": "Answers chat messages in the style of the fine-tuning examples.",
}


_LIMITATIONS = (
    "Measured only on a held-out split of the training data; inputs unlike that data "
    "(another population, period or source) may score worse than reported."
)


@dataclass(frozen=True, slots=True)
class TrainRequest:
    recipe: str
    data: str
    params: dict[str, Any] = field(default_factory=dict)
    name: str | None = None  # registered model name; default: the recipe's name
    cv: int = 0  # k of k-fold cross-validation on the training rows; 0 = none
    tune: int = 0  # Optuna trials before the final fit; 0 = none
    tune_timeout_s: float | None = None
    quantize: bool = False  # report dynamic int8 quantization (and keep it with keep_compressed)
    prune: float | None = None  # report magnitude pruning to this sparsity
    keep_compressed: bool = False  # export the compressed network instead of the original
    onnx: bool = False  # also export ONNX, with a parity check against torch
    parent: str | None = None  # NAME@VERSION to continue from (transfer learning)
    # Sources whose rows join the training part only (e.g. dataset:NAME@V of feedback).
    add_data: tuple[str, ...] = ()
    register: bool = True
    intended_use: str | None = None
    limitations: str = ""


@dataclass(frozen=True, slots=True)
class TrainResult:
    name: str
    version: int | None
    artifact_dir: Path | None
    report: RunReport
    world_size: int = 1  # processes that trained it (torchrun)


def train(
    request: TrainRequest,
    *,
    home: Path,
    database: Database | None,
    progress: Progress = silent,
    resolve_data: DataResolver | None = None,
) -> TrainResult:
    """Run ``request`` end to end; returns the registered version (None when not registered)."""
    distributed.init()
    cls = recipe_class(request.recipe)
    name = request.name or cls.name
    params = dict(request.params)
    lineage: dict[str, Any] = {"data": request.data}
    parent_ref: VersionRef | None = None
    if request.parent is not None:
        parent_ref, parent_dir = _parent(request.parent, database)
        if "init_from" not in cls.param_names():
            raise DataError(f"{cls.name} cannot continue from a registered version")
        params["init_from"] = str(parent_dir)
        lineage["parent"] = str(parent_ref)
    if request.data.startswith("dataset:"):
        lineage["dataset"] = request.data.removeprefix("dataset:")
    if request.add_data:
        lineage["added_data"] = list(request.add_data)
    source, *added_sources = (_resolved(s, resolve_data) for s in (request.data, *request.add_data))
    if distributed.world_size() > 1 and (request.cv or request.tune):
        raise DataError("--cv and --tune run in one process; drop them under torchrun")

    timings: dict[str, float] = {}
    started_at = datetime.now(UTC)
    recipe = cls(**params)
    with _timed(timings, "load"):
        progress("load", 0, 1, {})
        data = recipe.load_data(source)
        fingerprint = source_hash([source, *added_sources])
        progress("load", 1, 1, {"rows": float(recipe.rows(data))})
    splits: Splits[Any] = recipe.split(data)
    added = 0
    if added_sources:
        with _timed(timings, "add_data"):
            splits, added, repeated = add_training_rows(recipe, splits, added_sources)
        lineage["added_rows"] = added
        lineage["added_rows_left_out"] = repeated
    tuning: dict[str, Any] | None = None
    if request.tune:
        with _timed(timings, "tune"):
            tuning = _tune(recipe, splits, request, progress)
            recipe = cls(**{**recipe.get_params(), **tuning["best_params"]})
    checkpoints = home / "checkpoints" / name / _digest(recipe.get_params(), fingerprint)
    with _timed(timings, "fit"):
        recipe.fit(splits.train, splits.val, progress=progress, checkpoint_dir=checkpoints)
        # What validation chose is kept; the rows it was chosen on are learnt from too.
        recipe.refit(splits.train, splits.val, progress=progress, checkpoint_dir=checkpoints)
    if not distributed.is_main():
        distributed.barrier()
        return TrainResult(name, None, None, RunReport.empty(cls.name), distributed.world_size())
    with _timed(timings, "evaluate"):
        progress("evaluate", 0, 1, {})
        metrics = recipe.evaluate(splits.test)
        progress("evaluate", 1, 1, {})
    cv = None
    if request.cv:
        with _timed(timings, "cross_validate"):
            cv = _cross_validate(cls, recipe, splits, request.cv, progress)
    compression = _compress(recipe, splits, request, timings)
    staging = home / "artifacts" / name / f".staging-{uuid.uuid4().hex[:12]}"
    staging.mkdir(parents=True)
    try:
        with _timed(timings, "export"):
            export = recipe.export(staging)
        onnx = None
        if request.onnx:
            with _timed(timings, "onnx"):
                onnx = _onnx(recipe, staging)
        report = RunReport(
            recipe=cls.name,
            task=cls.task,
            started_at=started_at,
            finished_at=datetime.now(UTC),
            params=recipe.get_params(),
            data_source=" + ".join((request.data, *request.add_data)),
            data_hash=fingerprint,
            split_sizes={
                "train": recipe.rows(splits.train),
                "val": recipe.rows(splits.val),
                "test": recipe.rows(splits.test),
                **({"added to train": added} if request.add_data else {}),
            },
            metrics=metrics,
            cv=cv,
            tuning=tuning,
            compression=compression or [],
            onnx=onnx,
            timings=timings,
        )
        if database is not None and distributed.world_size() > 1:
            lineage["world_size"] = distributed.world_size()
        if not request.register or database is None:
            (staging / "report.json").write_text(report.to_json())
            kept = staging.with_name(staging.name.replace(".staging-", "run-"))
            staging.rename(kept)
            distributed.barrier()
            return TrainResult(name, None, kept, report, distributed.world_size())
        version, directory = _register(
            database, name, cls, export, staging, report, lineage, parent_ref, request
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(checkpoints, ignore_errors=True)  # the version is safe; no resume needed
    distributed.barrier()
    return TrainResult(name, version, directory, report, distributed.world_size())


def _parent(text: str, database: Database | None) -> tuple[VersionRef, Path]:
    if database is None:
        raise DataError("continuing from a registered version needs the database")
    ref = parse_ref(text)
    with database.session() as session:
        model, version = resolve(session, ref)
        exact = VersionRef(model.name, version=version.version)
        uri = version.artifact_uri
    path = Path(uri)
    directory = path if path.is_dir() else path.parent
    if not (directory / "manifest.json").exists():
        raise DataError(f"{exact} has no exported artifact folder to continue from")
    return exact, directory


def _resolved(source: str, resolve_data: DataResolver | None) -> str:
    if not source.startswith("dataset:"):
        return source
    if resolve_data is None:
        raise DataError(f"cannot resolve {source!r}: no dataset registry was given")
    return resolve_data(source)


def add_training_rows(
    recipe: Recipe[Any], splits: Splits[Any], sources: list[str]
) -> tuple[Splits[Any], int, int]:
    """``splits`` with the rows of ``sources`` added to its training part; returns the
    splits, the rows added, and the rows left out because their input is one of the
    validation or test inputs (training on them would grade the model on what it saw)."""
    held_out = {
        input_key(x) for part in (splits.val, splits.test) for x, _ in recipe.labelled_inputs(part)
    }
    train, added, repeated = splits.train, 0, 0
    for source in sources:
        more = recipe.load_rows(source)
        keep = [
            i
            for i, (x, _) in enumerate(recipe.labelled_inputs(more))
            if input_key(x) not in held_out
        ]
        repeated += recipe.rows(more) - len(keep)
        if keep:
            train = recipe.concat(train, recipe.subset(more, np.asarray(keep, dtype=np.int64)))
            added += len(keep)
    return Splits(train, splits.val, splits.test), added, repeated


def _digest(params: dict[str, Any], fingerprint: str) -> str:
    text = json.dumps({"params": params, "data": fingerprint}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round(time.perf_counter() - started, 3)


def _tune(
    recipe: Recipe[Any], splits: Splits[Any], request: TrainRequest, progress: Progress
) -> dict[str, Any]:
    from modelmint.training.tuning import tune

    result = tune(
        recipe,
        splits.train,
        splits.val,
        n_trials=request.tune,
        progress=progress,
        timeout_s=request.tune_timeout_s,
    )
    summary: dict[str, Any] = result.to_dict()
    return summary


def _cross_validate(
    cls: type[Recipe[Any]], recipe: Recipe[Any], splits: Splits[Any], k: int, progress: Progress
) -> dict[str, Any]:
    from modelmint.training.evaluation import cross_validate

    # Folds over the training rows: the test rows stay unseen for the final report.
    fresh = cls(**recipe.get_params())
    result: dict[str, Any] = dict(cross_validate(fresh, splits.train, k, progress=progress))
    return result


def _compress(
    recipe: Recipe[Any], splits: Splits[Any], request: TrainRequest, timings: dict[str, float]
) -> list[dict[str, Any]]:
    if not request.quantize and request.prune is None:
        return []
    from modelmint.training import compression

    if not hasattr(recipe, "torch_module"):
        raise DataError(f"{recipe.name} has no torch network to quantize or prune")
    torch_recipe: Any = recipe
    reports: list[dict[str, Any]] = []
    # Pruning first: when both are kept, the int8 copy is made of the pruned weights.
    if request.prune is not None:
        with _timed(timings, "prune"):
            pruned = compression.prune_magnitude(
                torch_recipe,
                splits.test,
                request.prune,
                keep_compressed=request.keep_compressed,
            )
            reports.append(pruned.to_dict())
    if request.quantize:
        with _timed(timings, "quantize"):
            quantized = compression.quantize_dynamic_int8(
                torch_recipe, splits.test, keep_compressed=request.keep_compressed
            )
            reports.append(quantized.to_dict())
    return reports


def _onnx(recipe: Recipe[Any], directory: Path) -> dict[str, Any]:
    from modelmint.training.onnx_export import export_onnx

    if not hasattr(recipe, "torch_module"):
        raise DataError(f"{recipe.name} has no torch network to export to ONNX")
    torch_recipe: Any = recipe
    report = export_onnx(torch_recipe, directory / "model.onnx")
    facts: dict[str, Any] = report.to_dict()
    facts["path"] = report.path.name  # relative: the folder moves when it is registered
    return facts


def _register(
    database: Database,
    name: str,
    cls: type[Recipe[Any]],
    export: Export,
    staging: Path,
    report: RunReport,
    lineage: dict[str, Any],
    parent: VersionRef | None,
    request: TrainRequest,
) -> tuple[int, Path]:
    from modelmint.training.cards import model_card

    directory: Path | None = None
    try:
        with database.session() as session:  # commits when the block ends
            number = next_version_number(session, name)
            directory = staging.parent / f"v{number}"
            if directory.exists():
                raise DataError(f"{directory} exists already; move it away or use another name")
            card = model_card(
                report,
                name=name,
                version=number,
                intended_use=request.intended_use or _INTENDED_USE.get(cls.task, ""),
                limitations=request.limitations or _LIMITATIONS,
            )
            (staging / "report.json").write_text(report.to_json())
            (staging / "report.md").write_text(report.to_markdown())
            (staging / "MODEL_CARD.md").write_text(card)
            staging.rename(directory)
            uri = directory
            if export.task == "chat":
                # llama.cpp loads the GGUF file itself, not the folder around it.
                uri = directory / str(export.serving["gguf"])
            register_trained(
                session,
                TrainedVersion(
                    name=name,
                    task=export.task,
                    recipe=cls.name,
                    format=export.format,
                    artifact_uri=str(uri.resolve()),
                    params=report.params,
                    metrics=report.metrics,
                    data_hash=report.data_hash,
                    lineage=lineage,
                    card=card,
                    parent=parent,
                ),
            )
    except BaseException:
        if directory is not None and directory.exists() and not staging.exists():
            directory.rename(staging)  # not registered: the caller removes the staging folder
        raise
    return number, directory
