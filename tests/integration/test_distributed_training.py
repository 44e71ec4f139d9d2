"""A recipe trains unchanged under torchrun: two CPU processes, gloo, one result."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sklearn.datasets import load_breast_cancer

pytestmark = pytest.mark.slow


def _write_csv(path: Path) -> None:
    data = load_breast_cancer()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([f"f{i}" for i in range(data.data.shape[1])] + ["target"])
        for row, label in zip(data.data, data.target, strict=True):
            writer.writerow([*row.tolist(), int(label)])


def test_two_process_gloo_job_trains_and_only_rank_zero_reports(tmp_path: Path) -> None:
    source = tmp_path / "cancer.csv"
    _write_csv(source)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "modelmint", "train", "tabular-classifier"]
    command += ["--data", str(source), "-p", "epochs=8", "--no-register", "--json"]
    result = subprocess.run(
        command,
        env={**os.environ, "MODELMINT_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(outputs) == 1, "every rank but rank 0 must stay quiet"
    run = json.loads(outputs[0])
    assert run["world_size"] == 2
    assert run["report"]["split_sizes"]["train"] > 300
    # Each rank saw half the rows per epoch; together they still learn the task.
    assert run["report"]["metrics"]["roc_auc"] > 0.95
    assert (Path(run["artifact_dir"]) / "manifest.json").exists()
