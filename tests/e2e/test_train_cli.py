"""`modelmint train` and the registry commands as a user runs them: cross-validation,
tuning, compression and ONNX in one run, the report and card on disk, aliases with
history, and clear exits on bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from sklearn.datasets import load_breast_cancer

from tests.support.processes import cli, cli_json

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"MODELMINT_HOME": str(tmp_path / "home")}


def _csv(path: Path, rows: int = 300) -> Path:
    data = load_breast_cancer()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([f"f{i}" for i in range(8)] + ["target"])
        for features, label in list(zip(data.data, data.target, strict=True))[:rows]:
            writer.writerow([*features[:8].tolist(), int(label)])
    return path


def _train(env: dict[str, str], *args: str) -> dict[str, object]:
    result = cli(env, "train", *args, "--json", timeout=900)
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_one_run_cross_validates_tunes_compresses_exports_and_documents(
    env: dict[str, str], tmp_path: Path
) -> None:
    data = _csv(tmp_path / "cancer.csv")
    run = _train(
        env, "tabular-classifier", "--data", str(data), "--name", "cancer",
        "-p", "epochs=4", "-p", "importance_repeats=1", "--cv", "3", "--tune", "3",
        "--quantize", "--prune", "0.5", "--onnx",
    )  # fmt: skip
    report = run["report"]
    assert isinstance(report, dict)
    assert len(report["cv"]["folds"]) == 3 and "roc_auc" in report["cv"]["mean"]
    assert len(report["tuning"]["trials"]) == 3 and report["tuning"]["best_params"]
    methods = {c["method"] for c in report["compression"]}
    assert methods == {"dynamic-int8", "prune-global"}
    assert report["onnx"]["max_abs_diff"] < 1e-4
    folder = Path(str(run["artifact_dir"]))
    assert folder.name == "v1"
    for name in ("report.json", "report.md", "MODEL_CARD.md", "model.onnx", "manifest.json"):
        assert (folder / name).exists(), name
    card = (folder / "MODEL_CARD.md").read_text()
    assert "## Intended use" in card and "## Feature importances" in card
    assert json.loads((folder / "report.json").read_text())["data_hash"].startswith("sha256:")


def test_aliases_move_with_history_and_bad_input_exits_clearly(
    env: dict[str, str], tmp_path: Path
) -> None:
    data = _csv(tmp_path / "cancer.csv", rows=150)
    for seed in ("0", "1"):
        _train(env, "tabular-classifier", "--data", str(data), "--name", "risk",
               "-p", "epochs=2", "-p", f"seed={seed}", "-p", "baseline=false")  # fmt: skip
    cli(env, "models", "promote", "risk@1", "--alias", "production")
    cli(env, "models", "promote", "risk@2", "--alias", "production", "--note", "better")
    shown = cli_json(env, "models", "show", "risk")
    assert [(v["version"], v["aliases"]) for v in shown] == [(1, []), (2, ["production"])]
    assert shown[1]["lineage"]["data"] == str(data) and shown[1]["recipe"] == "tabular-classifier"
    history = cli_json(env, "models", "history", "risk")
    assert [(h["from"], h["to"], h["note"]) for h in history] == [(None, 1, ""), (1, 2, "better")]

    missing = cli(env, "train", "tabular-classifier", "--data", str(data), "-p", "target=nope",
                  check=False)  # fmt: skip
    assert missing.returncode == 2 and "nope" in missing.stderr
    typo = cli(env, "train", "tabular-classifier", "--data", str(data), "-p", "epochs=2O",
               check=False)  # fmt: skip
    assert typo.returncode == 2 and "epochs" in typo.stderr
    unknown = cli(env, "deploy", "risk@9", check=False)
    assert unknown.returncode == 4 and "risk@9" in unknown.stderr
