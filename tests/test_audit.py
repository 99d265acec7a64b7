"""The audit trail: a run reconstructed from its MLflow run id alone, and the champion gate both ways."""

import json

import pytest

from tasks import audit, tracking
from tasks.cli import main


def _run(config, out, *extra):
    assert main(["run", str(config), "--output", str(out), "--set", "baselines=false", *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def test_run_is_auditable_from_its_mlflow_run_id_alone(tiny_config, tmp_path, capsys):
    summary = _run(tiny_config, tmp_path / "out", "--set", "generations=2")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    report = audit.collect(summary["mlflow_run_id"], uri)

    assert report["status"] == "FINISHED"
    assert report["config"]["generations"] == 2 and report["config"]["F"] == 0.5
    assert [g["best_fitness"] for g in report["generations"]] == [g["best_fitness"] for g in summary["generations"]]
    assert [g["generation"] for g in report["generations"]] == [0, 1, 2]
    expected = [(e["generation"], e["target"], e["reference"], e["accepted"]) for e in summary["lineage"]]
    assert [(r["generation"], r["individual"], r["reference"], r["accepted"]) for r in report["lineage"]] == expected
    # mlflow.log_table stores floats with 10 significant decimals.
    assert [r["fitness"] for r in report["lineage"]] == pytest.approx([e["fitness"] for e in summary["lineage"]], abs=1e-9)
    assert {d["context"] for d in report["inputs"]} == {"dev", "heldout/books", "heldout/food", "heldout/travel", "heldout/ood"}
    assert {"config.json", "summary.json", "lineage.json", "fitness_curve.png", "fused_model"} <= set(report["artifacts"])
    assert report["final"]["dev_macro_f1"] == summary["final"]["dev"]["macro_f1"]
    [version] = report["registered"]
    assert set(version["aliases"]) == {"challenger", "champion"}  # the first run has no champion to beat
    # The run page's description says what ran and what came of it, in the run's own numbers.
    description = tracking.client_for(uri).get_run(summary["mlflow_run_id"]).data.tags["mlflow.note.content"]
    assert f"{summary['generations'][0]['best_fitness']:.4f} at generation 0, {summary['final']['fitness']:.4f} fused" in description
    assert f"out-of-domain {summary['final']['heldout_mean']['out_of_domain']['macro_f1']:.4f}" in description
    assert summary["promotion"]["reason"] in description and summary["fused_model_sha256"][:16] in description

    # One child run per evaluated offspring, tagged with generation and individual.
    client = tracking.client_for(uri)
    children = client.search_runs(
        [client.get_run(summary["mlflow_run_id"]).info.experiment_id], f"tags.`mlflow.parentRunId` = '{summary['mlflow_run_id']}'"
    )
    assert sorted((int(c.data.tags["evolver.generation"]), int(c.data.tags["evolver.individual"])) for c in children) == sorted(
        (e["generation"], e["target"]) for e in summary["lineage"]
    )
    with open(client.download_artifacts(summary["mlflow_run_id"], "fitness_curve.png", str(tmp_path)), "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"

    # The fused model, downloaded from MLflow and loaded with transformers, reproduces the logged dev score exactly.
    check = audit.verify(report, uri)
    assert check["match"] and check["recomputed"] == summary["final"]["dev"]["macro_f1"]
    assert main(["audit", summary["mlflow_run_id"], "--tracking-uri", uri, "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "lineage" in printed and ": match" in printed and "fused_model" in printed


def test_champion_gate_promotes_only_a_better_model(tiny_config, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    baseline = _run(tiny_config, tmp_path / "baseline", "--set", "generations=0")
    evolved = _run(tiny_config, tmp_path / "evolved", "--set", "generations=3")
    assert evolved["final"]["dev"]["macro_f1"] > baseline["final"]["dev"]["macro_f1"], "the tiny setup must let Evolver improve"
    assert baseline["promotion"]["promoted"] and "no champion yet" in baseline["promotion"]["reason"]
    assert evolved["promotion"]["promoted"] and "beats champion version 1" in evolved["promotion"]["reason"]
    assert evolved["promotion"]["champion_dev"] == baseline["final"]["dev"]["macro_f1"]  # re-scored on the same dev data

    # A worse challenger (the baseline again, as a new run) does not take the alias.
    again = _run(tiny_config, tmp_path / "again", "--set", "generations=0")
    assert not again["promotion"]["promoted"] and "does not beat champion version 2" in again["promotion"]["reason"]
    client = tracking.client_for(uri)
    assert str(client.get_model_version_by_alias("evolver-fused", "champion").version) == "2"
    assert str(client.get_model_version_by_alias("evolver-fused", "challenger").version) == "3"
    assert client.get_run(again["mlflow_run_id"]).data.tags["evolver.promoted"] == "false"
