"""Guarded evolution: validation rows apart from fitness, per-domain fitness aggregates, the output chosen on
validation, the validation tolerance, and a champion gate that looks beyond dev data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tasks import audit, taskpool, tracking
from tasks.cli import main
from tasks.config import ConfigError, EvolverConfig
from tasks.store import open_store


def _run(config: Path, out: Path, *extra: str) -> dict:
    assert main(["run", str(config), "--output", str(out), "--set", "baselines=false", *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def _with(config: Path, path: Path, **changes) -> Path:
    """A copy of a YAML config with top-level keys (and `data.<key>` keys) changed."""
    conf = yaml.safe_load(config.read_text())
    for key, value in changes.items():
        if key.startswith("data_"):
            conf["data"][key.removeprefix("data_")] = value
        else:
            conf[key] = value
    path.write_text(yaml.safe_dump(conf))
    return path


def _store_of(summary: dict, config: Path):
    return open_store(yaml.safe_load(config.read_text())["store"]).scoped(summary["run_key"])


def _relabel(frame: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """The same texts with the labels of `rows` rotated to another class."""
    labels = ["negative", "neutral", "positive"]
    out = frame.copy()
    out.loc[rows, "label"] = [labels[(labels.index(v) + 1) % 3] for v in frame.loc[rows, "label"]]
    return out


def _validation_mask_per_source(dev: list[str], fraction: float, seed: int) -> list[np.ndarray]:
    sizes = [len(pd.read_csv(p)) for p in dev]
    source = torch.cat([torch.full((n,), i, dtype=torch.int32) for i, n in enumerate(sizes)])
    mask = taskpool.validation_mask(source, fraction, seed).numpy()
    bounds = np.cumsum([0, *sizes])
    return [mask[bounds[i] : bounds[i + 1]] for i in range(len(sizes))]


@pytest.mark.parametrize("changed", ["validation", "fitness"])
def test_validation_rows_never_enter_fitness_and_fitness_rows_never_enter_validation(tiny_config, tmp_path, changed):
    conf = yaml.safe_load(tiny_config.read_text())
    dev = conf["data"]["dev"]
    masks = _validation_mask_per_source(dev, 0.5, seed=1)
    relabelled = []
    for path, mask in zip(dev, masks):
        frame = pd.read_csv(path)
        rows = np.nonzero(mask if changed == "validation" else ~mask)[0]
        target = tmp_path / "relabelled" / Path(path).name
        target.parent.mkdir(exist_ok=True)
        _relabel(frame, rows).to_csv(target, index=False)
        relabelled.append(str(target))
    guarded = _with(tiny_config, tmp_path / "guarded.yaml", data_validation=0.5, generations=2)
    original = _run(guarded, tmp_path / "original")
    changed_run = _run(_with(guarded, tmp_path / "changed.yaml", data_dev=relabelled), tmp_path / "changed")

    fitness = lambda s: [e["fitness"] for e in s["lineage"]]
    validation = lambda s: [e["validation"] for e in s["lineage"]]
    if changed == "validation":
        # Other labels on the validation rows: every fitness value, hence every selection, is the same.
        assert fitness(changed_run) == fitness(original)
        assert [g["best_fitness"] for g in changed_run["generations"]] == [g["best_fitness"] for g in original["generations"]]
        assert validation(changed_run) != validation(original)
    else:
        # Other labels on the fitness rows: the initial population's validation score is the same.
        assert changed_run["generations"][0]["validation"] == original["generations"][0]["validation"]
        assert changed_run["generations"][0]["best_fitness"] != original["generations"][0]["best_fitness"]


def test_validation_split_is_identical_across_shard_counts_and_runs(tiny_config, tmp_path):
    guarded = _with(tiny_config, tmp_path / "guarded.yaml", data_validation=0.3, generations=2)
    runs = [_run(guarded, tmp_path / name, "--set", f"shards={shards}") for name, shards in (("one", 1), ("three", 3), ("again", 1))]
    marks = [_store_of(s, guarded).get_tensors("data/dev.safetensors")["validation"] for s in runs]
    assert all(torch.equal(marks[0], m) for m in marks[1:])
    source = _store_of(runs[0], guarded).get_tensors("data/dev.safetensors")["source"]
    for index in range(3):  # round(0.3 * 40) = 12 of each source's 40 rows
        assert int(marks[0][source == index].sum()) == 12
    assert runs[0]["generations"] == runs[1]["generations"] == runs[2]["generations"]
    assert runs[0]["lineage"] == runs[1]["lineage"] == runs[2]["lineage"]
    assert runs[0]["fused_model_sha256"] == runs[1]["fused_model_sha256"] == runs[2]["fused_model_sha256"]
    assert all("validation" in e for e in runs[0]["lineage"])
    # The audit re-derives the same split from the config alone and reproduces the logged dev score exactly.
    uri = yaml.safe_load(guarded.read_text())["tracking_uri"]
    report = audit.collect(runs[0]["mlflow_run_id"], uri)
    assert audit.verify(report, uri)["match"]
    assert [g["best_validation"] for g in report["generations"]] == [g["best_validation"] for g in runs[0]["generations"]]
    assert report["final"]["validation_macro_f1"] == runs[0]["final"]["validation"]["macro_f1"]


@pytest.mark.parametrize("aggregate", ["mean_domain", "worst_domain"])
def test_domain_aggregates_equal_their_definition_from_per_source_counts(tiny_config, tmp_path, aggregate):
    config = _with(tiny_config, tmp_path / "agg.yaml", fitness_aggregate=aggregate, generations=1, shards=2)
    summary = _run(config, tmp_path / "out")
    store = _store_of(summary, config)
    combine = {"mean_domain": np.mean, "worst_domain": np.min}[aggregate]
    checked = 0
    for g in (0, 1):
        plan = store.get_json(f"gen={g}/round=0/candidates.json")
        for c in range(len(plan["candidates"])):
            shards = [store.get_json(f"gen={g}/round=0/cand={c}/shard={s}.json")["counts"]["data"]["fitness"] for s in range(2)]
            per_source = np.sum(np.asarray(shards), axis=0)
            expected = combine([_macro_f1_from_counts(m) for m in per_source])
            if g == 0:
                assert summary["generations"][0]["best_fitness"] == pytest.approx(expected, abs=1e-12)
            else:
                entry = next(e for e in summary["lineage"] if e["generation"] == 1 and e["round"] == 0 and e["target"] == plan["candidates"][c]["targets"][0])
                assert entry["fitness"] == pytest.approx(expected, abs=1e-12)
            checked += 1
    assert checked == 1 + 3
    # Pooled is not the mean of the sources, so the aggregate is really in use.
    pooled = _run(_with(config, tmp_path / "pooled.yaml", fitness_aggregate="pooled"), tmp_path / "pooled")
    assert pooled["generations"][0]["best_fitness"] != summary["generations"][0]["best_fitness"]


def _macro_f1_from_counts(matrix) -> float:
    """Macro-F1 from a confusion matrix, by its definition (the mean over labels of 2TP / (2TP + FP + FN))."""
    m = np.asarray(matrix, dtype=float)
    tp = np.diag(m)
    fp, fn = m.sum(0) - tp, m.sum(1) - tp
    present = (m.sum(0) + m.sum(1)) > 0
    f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    return float(f1[present].mean()) if present.any() else 0.0


def test_aggregate_score_matches_sklearn_per_source():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(3)
    sources = []
    for n in (30, 7, 50):
        truth, predicted = rng.integers(0, 3, n), rng.integers(0, 3, n)
        counts = np.zeros((3, 3), dtype=int)
        np.add.at(counts, (truth, predicted), 1)
        sources.append((truth, predicted, counts.tolist()))
    per_source = [f1_score(t, p, average="macro", zero_division=0) for t, p, _ in sources]
    counts = [c for _, _, c in sources]
    all_truth, all_predicted = np.concatenate([t for t, _, _ in sources]), np.concatenate([p for _, p, _ in sources])
    assert taskpool.aggregate_score(counts, "macro_f1", "worst_domain") == pytest.approx(min(per_source), abs=1e-12)
    assert taskpool.aggregate_score(counts, "macro_f1", "mean_domain") == pytest.approx(np.mean(per_source), abs=1e-12)
    assert taskpool.aggregate_score(counts, "macro_f1", "pooled") == pytest.approx(f1_score(all_truth, all_predicted, average="macro"), abs=1e-12)
    # An empty source (no rows in this role) is left out, not scored as 0.
    assert taskpool.aggregate_score([*counts, [[0] * 3] * 3], "macro_f1", "worst_domain") == pytest.approx(min(per_source), abs=1e-12)


def _states(summary: dict) -> list[tuple[int, float, float]]:
    """(generation, validation, fitness) of every accepted state of a sequential run, in order: each accepted
    offspring is a new state there."""
    states = [(0, summary["generations"][0]["validation"], summary["generations"][0]["best_fitness"])]
    for entry in sorted(summary["lineage"], key=lambda e: (e["generation"], e["round"])):
        if entry["accepted"]:
            states.append((entry["generation"], entry["validation"], entry["fitness"]))
    return states


def test_output_is_the_accepted_state_with_the_best_validation_score(tiny_config, tmp_path):
    config = _with(tiny_config, tmp_path / "early.yaml", data_validation=0.5, generations=3, schedule="sequential", registered_model=None)
    summary = _run(config, tmp_path / "out")
    states = _states(summary)
    assert len(states) > 1, "the tiny setup must accept offspring"
    best = max(v for _, v, _ in states)
    output = summary["output"]
    assert output["rule"] == "best validation score" and output["validation"] == best
    first_best = next(s for s in states if s[1] == best)  # ties keep the earlier state
    assert (output["generation"], output["fitness"]) == (first_best[0], first_best[2])
    assert summary["final"]["validation"]["macro_f1"] == pytest.approx(best, abs=1e-12)
    assert [g["best_validation"] for g in summary["generations"]] == sorted(g["best_validation"] for g in summary["generations"])


def test_zero_validation_tolerance_never_accepts_a_validation_drop(tiny_config, tmp_path):
    # Adversarial validation data (a dev domain with its labels rotated): what improves fitness tends to lower
    # it, so the guard has something to refuse.
    dev = yaml.safe_load(tiny_config.read_text())["data"]["dev"]
    frame = pd.read_csv(dev[0])
    rotated = tmp_path / "rotated.csv"
    _relabel(frame, np.arange(len(frame))).to_csv(rotated, index=False)
    changes = {"data_validation": [str(rotated)], "generations": 3, "schedule": "sequential", "registered_model": None}
    free = _run(_with(tiny_config, tmp_path / "free.yaml", **changes), tmp_path / "free")
    strict = _run(_with(tiny_config, tmp_path / "strict.yaml", **changes, validation_tolerance=0.0), tmp_path / "strict")

    drops = lambda summary: [b[1] - a[1] for a, b in zip(_states(summary), _states(summary)[1:]) if b[1] < a[1]]
    assert drops(free), "without the guard the run accepts an offspring that lowers validation"
    assert not drops(strict), "with tolerance 0 the state's validation score never falls"
    # The guard refused some offspring that beat the fitness of its time, and said so in the lineage.
    best, refused = strict["generations"][0]["best_fitness"], 0
    for entry in sorted(strict["lineage"], key=lambda e: (e["generation"], e["round"])):
        if entry["accepted"]:
            best = entry["fitness"]
        elif entry["fitness"] > best:
            refused += 1
    assert refused > 0
    assert strict["generations"][0] == free["generations"][0]  # the same start; the guard acts only on offspring


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"validation_tolerance": 0.1}, "validation_tolerance needs validation data"),
        ({"gate_rule": "both"}, "gate_rule both needs gate_data"),
        ({"data_validation": 1.5}, "between 0 and 1"),
        ({"fitness_aggregate": "median"}, "fitness_aggregate"),
    ],
)
def test_guard_settings_without_their_data_fail_before_compute(tiny_config, tmp_path, capsys, changes, message):
    config = _with(tiny_config, tmp_path / "bad.yaml", **changes)
    assert main(["run", str(config)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_gate_and_validation_data_must_be_apart_from_dev(tiny_config):
    conf = yaml.safe_load(tiny_config.read_text())
    with pytest.raises(ConfigError, match="also dev or validation data"):
        EvolverConfig.from_dict({**conf, "gate_data": conf["data"]["dev"][0]})
    with pytest.raises(ConfigError, match="also dev sources"):
        EvolverConfig.from_dict({**conf, "data": {**conf["data"], "validation": [conf["data"]["dev"][1]]}})


# -- the champion gate ------------------------------------------------------------------------------------


def _predicted_labels(model_dir: Path, texts: list[str]) -> list[str]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    return [model.config.id2label[int(i)] for i in logits.argmax(-1)]


def test_gate_rule_decides_both_ways(tiny_config, tiny_population, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    baseline = _run(tiny_config, tmp_path / "a", "--set", "generations=0")
    assert baseline["promotion"]["promoted"]  # champion: version 1

    # Gate data labelled by the baseline's own predictions: the baseline scores 1.0 there, and any model that
    # predicts differently scores less, whatever its dev score.
    texts = [t for path in tiny_population["test"].values() for t in pd.read_csv(path)["text"]]
    model_dir = _store_of(baseline, tiny_config).local_path("final/model/config.json").parent
    gate = tmp_path / "gate.csv"
    pd.DataFrame({"text": texts, "label": _predicted_labels(model_dir, texts)}).to_csv(gate, index=False)
    gated = _with(tiny_config, tmp_path / "gated.yaml", gate_data=str(gate))

    evolved = lambda name, rule: _run(gated, tmp_path / name, "--set", "generations=3", "--set", f"gate_rule={rule}")
    by_gate = evolved("b", "gate_data")
    assert by_gate["final"]["dev"]["macro_f1"] > baseline["final"]["dev"]["macro_f1"], "Evolver must improve dev in the tiny setup"
    assert by_gate["final"]["gate"]["macro_f1"] < 1.0, "the evolved model must disagree with the baseline somewhere"
    decision = by_gate["promotion"]
    assert not decision["promoted"] and decision["decided_by"] == "gate_data"
    assert decision["champion_gate_data"] == 1.0 and decision["margins"]["dev"] > 0 > decision["margins"]["gate_data"]
    by_both = evolved("c", "both")
    assert not by_both["promotion"]["promoted"] and by_both["promotion"]["decided_by"] == "gate_data"
    by_dev = evolved("d", "dev")
    assert by_dev["promotion"]["promoted"] and by_dev["promotion"]["decided_by"] == "dev"  # champion: version 4

    # The other way: the baseline again loses on dev but wins on the gate data.
    again = lambda name, rule: _run(gated, tmp_path / name, "--set", "generations=0", "--set", f"gate_rule={rule}")
    both_again = again("e", "both")
    assert not both_again["promotion"]["promoted"] and both_again["promotion"]["decided_by"] == "dev"
    gate_again = again("f", "gate_data")
    decision = gate_again["promotion"]
    assert decision["promoted"] and decision["margins"]["gate_data"] > 0 > decision["margins"]["dev"]

    client = tracking.client_for(uri)
    assert str(client.get_model_version_by_alias("evolver-fused", "champion").version) == decision["version"]
    tags = client.get_run(gate_again["mlflow_run_id"]).data.tags
    assert tags["evolver.gate_rule"] == "gate_data" and tags["evolver.gate_decided_by"] == "gate_data"
    assert float(tags["evolver.gate_margin_gate_data"]) == pytest.approx(decision["margins"]["gate_data"], abs=1e-6)
    assert "gate_macro_f1" in client.get_run(gate_again["mlflow_run_id"]).data.metrics


@pytest.mark.parametrize(
    "rule, dev, gate, promoted, decided_by",
    [
        ("dev", 0.01, -0.2, True, "dev"),
        ("dev", 0.0, 0.3, False, "dev"),  # a tie keeps the champion
        ("gate_data", -0.2, 0.01, True, "gate_data"),
        ("gate_data", 0.3, 0.0, False, "gate_data"),
        ("both", 0.0, 0.02, True, "gate_data"),
        ("both", 0.01, 0.02, True, "dev and gate_data"),
        ("both", 0.05, -0.01, False, "gate_data"),
        ("both", -0.01, 0.05, False, "dev"),
        ("both", 0.0, 0.0, False, "dev and gate_data (equal)"),
    ],
)
def test_gate_decision_table(rule, dev, gate, promoted, decided_by):
    from tasks.stages import gate_decision

    assert gate_decision(rule, {"dev": dev, "gate_data": gate}) == (promoted, decided_by)
