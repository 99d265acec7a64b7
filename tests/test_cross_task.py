"""Cross-task fusion: members fine-tuned on different tasks (3 labels, 2-label pairs, regression, NER) keep their
heads; the shared body is evolved and merged, and fitness is the mean of the tasks' metrics."""

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tasks import audit, taskpool, tracking
from tasks.cli import main
from tasks.config import ConfigError, EvolverConfig
from tests import tiny


def _config(population, tmp_path, name="config", **overrides):
    conf = {
        "models": [str(m) for m in population["members"]],
        "tasks": population["tasks"],
        "generations": 2,
        "store": str(tmp_path / "store"),
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        **overrides,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def _run(config, out, *extra):
    assert main(["run", str(config), "--output", str(out), *extra]) == 0
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("merger", ["fisher", "ties"])
def test_each_task_keeps_its_head_and_the_fused_models_reproduce_their_scores(tiny_cross_task, tmp_path, merger):
    population = tiny_cross_task
    names = [t["name"] for t in population["tasks"]]
    config = _config(population, tmp_path, merger=merger, base_model=str(population["base"]))
    one = _run(config, tmp_path / "one", "--set", "shards=1")
    three = _run(config, tmp_path / "three", "--set", "shards=3", "--set", f"store={tmp_path / 'store3'}", "--set", "registered_model=null")
    assert one["generations"] == three["generations"] and one["fused_model_sha256"] == three["fused_model_sha256"]
    assert [e["fitness"] for e in one["lineage"]] == [e["fitness"] for e in three["lineage"]]

    # Fitness is the unweighted mean of the tasks' dev metrics (mse would enter negated).
    final = one["final"]
    assert set(final["tasks"]) == set(names)
    specs = EvolverConfig.from_dict(one["config"]).task_list
    mean = sum(taskpool.fitness_value(t.metric, final["tasks"][t.name]["dev"][t.metric]) for t in specs) / len(specs)
    assert final["dev"]["mean"] == pytest.approx(mean, abs=1e-15) and one["generations"][-1]["best_fitness"] == final["dev"]["mean"]
    assert {t.name: t.metric for t in specs} == {"sentiment": "macro_f1", "qa": "macro_f1", "score": "pearson", "ner": "entity_f1"}

    # One model folder per task: the fused body in each, and each member's own head, bit for bit.
    store = one["fused_model_uri"].removeprefix("file://")
    fused = {name: load_file(f"{store}/{name}/model.safetensors") for name in names}
    members = {name: load_file(folder / "model.safetensors") for name, folder in zip(names, population["members"])}
    body = [n for n in fused["ner"] if n.startswith("bert.")]
    assert body and all(torch.equal(fused[name][n], fused["ner"][n]) for name in names for n in body)
    assert any(not torch.equal(fused["ner"][n], members["ner"][n]) for n in body)  # the body did move
    for name in names:
        head = [n for n in members[name] if n not in body]
        assert head and all(torch.equal(fused[name][n], members[name][n]) for n in head), name
    assert [n for n in members["sentiment"] if n not in body and not n.startswith("classifier.")] == ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]

    # Each task's model loads with its task's Auto class from MLflow and reproduces its logged dev score.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    report = audit.collect(one["mlflow_run_id"], uri)
    check = audit.verify(report, uri)
    assert check["match"] and set(check["tasks"]) == set(names)
    assert all(c["recomputed"] == final["tasks"][name]["dev"][c["metric"]] for name, c in check["tasks"].items())
    assert report["final"]["ner_dev_entity_f1"] == final["tasks"]["ner"]["dev"]["entity_f1"]
    # ... and is registered under <registered_model>-<task>, promoted together.
    client = tracking.client_for(uri)
    # Each task's score per generation (its mean is the generation's best fitness) and per offspring, in MLflow.
    for record in one["generations"]:
        assert set(record["task_fitness"]) == set(names)
        assert sum(record["task_fitness"].values()) / len(names) == pytest.approx(record["best_fitness"], abs=1e-12)
    assert all(set(entry["tasks"]) == set(names) for entry in one["lineage"])
    for name in names:
        history = sorted(client.get_metric_history(one["mlflow_run_id"], f"fitness_{name}"), key=lambda m: m.step)
        assert [m.step for m in history] == [0, 1, 2]
        assert history[-1].value == pytest.approx(one["generations"][-1]["task_fitness"][name], abs=1e-12)
    for name in names:
        version = client.get_model_version_by_alias(f"evolver-fused-{name}", "champion")
        assert version.run_id == one["mlflow_run_id"]


@pytest.mark.parametrize(("mode", "merger", "generations"), [("merge", "average", 0), ("merge", "fisher", 1), ("plain", "average", 1)])
def test_finalize_reports_the_dev_statistics_evaluate_stored_exactly(tiny_cross_task, tmp_path, mode, merger, generations):
    """finalize reuses the summed shard statistics of the candidate it outputs instead of scoring dev again:
    they must equal a fresh score of the fused models, for every task type (counts, Pearson sums, entities)."""
    from tasks import stages
    from tasks.cli import run_pipeline

    population = tiny_cross_task
    conf = yaml.safe_load(_config(population, tmp_path, mode=mode, merger=merger, generations=generations, shards=3, registered_model=None).read_text())
    cfg = EvolverConfig.from_dict(conf)
    summary = run_pipeline(cfg, "reuse", log=lambda line: None)
    run = stages.Run(cfg, "reuse")
    output = summary["output"]
    members = stages._output_of(run, run.store.get_json(f"gen={generations}/population.json"), generations)["members"]
    stored = stages._stored_dev_counts(run, members, output["generation"])
    # Each of these outputs a candidate scored in its last generation (the generation-0 merge; an accepted
    # offspring's merge; an individual that improved), so its statistics are stored.
    assert stored is not None
    models = stages._scored_models(run, members, output["generation"])
    assert stages._report(run, models, stored) == stages._report(run, models) == {k: v for k, v in summary["final"].items() if k not in ("fitness", "validation_score")}
    assert stages._stored_dev_counts(run, members, generations + 1) is None  # no such generation: score again


def test_bad_cross_task_configs_fail_before_compute_naming_the_task(tiny_cross_task, tmp_path):
    from tasks import stages
    from tasks.modelpool import IncompatibleCheckpoints

    population = tiny_cross_task
    raw = yaml.safe_load(_config(population, tmp_path).read_text())

    def invalid(match, **changes):
        with pytest.raises(ConfigError, match=match):
            EvolverConfig.from_dict({**raw, **changes})

    invalid("4 tasks for 3 models", models=raw["models"][:3])
    invalid("tasks.2.task_type", tasks=[*raw["tasks"][:2], {**raw["tasks"][2], "task_type": "ranking"}, raw["tasks"][3]])
    invalid("task score: metric macro_f1 does not fit task_type regression", tasks=[*raw["tasks"][:2], {**raw["tasks"][2], "metric": "macro_f1"}, raw["tasks"][3]])
    invalid("not both", data={"dev": raw["tasks"][0]["dev"]})
    invalid("names must differ", tasks=[*raw["tasks"][:3], {**raw["tasks"][3], "name": "qa"}])

    def fails(name, error, match, **changes):
        conf = {**raw, "store": str(tmp_path / name), **changes}
        with pytest.raises(error, match=match):
            stages.download_models(conf, name)
            stages.init_population(conf, name)
        assert not list((tmp_path / name).glob("*/init.json"))  # nothing computed

    # A label outside the sentiment head, named with its task.
    odd = tiny.write_csv(tmp_path / "odd.csv", [("tasty and fresh", "maybe")])
    tasks = [{**raw["tasks"][0], "dev": str(odd)}, *raw["tasks"][1:]]
    fails("labels", taskpool.DataError, r"task sentiment: .*odd.csv: labels \['maybe'\] are not in", tasks=tasks)
    # A member whose body differs (a wider feed-forward layer): every difference listed, naming the task.
    wide = tmp_path / "wide"
    shutil.copytree(population["members"][3], wide)
    torch.manual_seed(0)
    from transformers import BertForTokenClassification

    BertForTokenClassification(tiny.bert_config(len(tiny.ner_vocabulary()), tiny.TAGS, intermediate_size=48)).save_pretrained(wide)
    fails("bodies", IncompatibleCheckpoints, r"task ner \(.*wide\): its body differs .*intermediate_size 48(.|\n)*intermediate.dense.weight", models=[*raw["models"][:3], str(wide)])


def test_the_multitask_reference_trains_one_body_with_a_head_per_task(tiny_cross_task, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from tasks.finetune import RECORD, finetune_multitask

    population = tiny_cross_task
    columns = {t["name"]: t for t in population["tasks"]}
    labels = {"sentiment": tiny.LABELS, "qa": tiny.ANSWERS, "score": (), "ner": tiny.TAGS}
    specs = [
        {
            "name": name,
            "train": columns[name]["dev"],  # any labelled file will do: this checks the mechanics, not a score
            "labels": list(labels[name]),
            "task_type": columns[name].get("task_type", "sequence_classification"),
            "max_length": 32,
            **{k: columns[name][k] for k in ("text_column", "text_pair_column", "label_column") if k in columns[name] and name != "ner"},
        }
        for name in labels
    ]
    out = tmp_path / "joint"
    lines = []
    finetune_multitask(specs, out, base_model=population["base"], epochs=1, batch_size=8, seed=3, log=lines.append)
    assert "shared: embeddings, encoder;" in "\n".join(lines)  # the pooler: sequence heads have one, NER has none
    saved = {name: load_file(out / name / "model.safetensors") for name in labels}
    base = {f"bert.{n}": t for n, t in load_file(population["base"] / "model.safetensors").items()}
    body = [n for n in saved["ner"] if n.startswith(("bert.embeddings.", "bert.encoder."))]
    assert body and all(torch.equal(saved[name][n], saved["ner"][n]) for name in labels for n in body)
    assert any(not torch.equal(saved["ner"][n], base[n]) for n in body)  # trained, by every task
    assert "bert.pooler.dense.weight" not in saved["ner"]
    assert not torch.equal(saved["sentiment"]["bert.pooler.dense.weight"], saved["qa"]["bert.pooler.dense.weight"])
    # Each task's folder loads as that task's model, with its own head.
    assert AutoModelForSequenceClassification.from_pretrained(out / "qa").num_labels == 2
    assert AutoModelForSequenceClassification.from_pretrained(out / "score").config.problem_type == "regression"
    assert AutoModelForTokenClassification.from_pretrained(out / "ner").num_labels == len(tiny.TAGS)
    # The same arguments again: nothing is trained.
    stamp = (out / RECORD).stat().st_mtime_ns
    finetune_multitask(specs, out, base_model=population["base"], epochs=1, batch_size=8, seed=3, log=lines.append)
    assert lines[-1].endswith("up to date, not fine-tuning again") and (out / RECORD).stat().st_mtime_ns == stamp
