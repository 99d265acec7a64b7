import json
from pathlib import Path

import pytest
import torch
import yaml

from tasks.cli import main


def _run(config, out, *extra):
    assert main(["run", str(config), "--output", str(out), *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def test_same_seed_and_any_shard_count_give_identical_results(tiny_config, tmp_path):
    one = _run(tiny_config, tmp_path / "a", "--set", "shards=1")
    # 3 shards, packed into 2 evaluate tasks per round: a task scores several work items
    three = _run(tiny_config, tmp_path / "b", "--set", "shards=3", "--set", "evaluate_tasks=2")
    again = _run(tiny_config, tmp_path / "c", "--set", "shards=1")
    assert one["generations"] == three["generations"] == again["generations"]
    assert one["fused_model_sha256"] == three["fused_model_sha256"] == again["fused_model_sha256"]
    best = [g["best_fitness"] for g in one["generations"]]
    assert best == sorted(best), "merged dev fitness must never decrease"
    assert one["final"]["dev"]["macro_f1"] == best[-1]
    assert set(one["final"]["heldout"]) == {"books", "food", "travel", "ood"}


def test_bfloat16_evaluation_with_token_budget_batches_is_shard_invariant(tiny_config, tmp_path):
    from safetensors import safe_open

    settings = ["--set", "dtype=bfloat16", "--set", "data.batch_tokens=300", "--set", "generations=1"]
    one = _run(tiny_config, tmp_path / "a", *settings, "--set", "shards=1")
    three = _run(tiny_config, tmp_path / "b", *settings, "--set", "shards=3")
    assert one["generations"] == three["generations"]
    assert one["fused_model_sha256"] == three["fused_model_sha256"]
    fp32 = _run(tiny_config, tmp_path / "c", "--set", "generations=1")
    assert fp32["fused_model_sha256"] != one["fused_model_sha256"]
    weights = one["fused_model_uri"].removeprefix("file://") + "/model.safetensors"
    with safe_open(weights, "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"BF16"}


def test_sixteen_members_and_thirty_two_shards_give_the_one_shard_result(tiny_population, tiny_config, tmp_path):
    """The scale of the search: 16 members (the tiny ones and seeded perturbations of them), 16 candidates x 32
    shards = 512 work items per round, packed into 4 evaluate tasks, and the same result as one shard."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    members = []
    for i in range(16):
        folder = tmp_path / f"member{i}"
        shutil.copytree(tiny_population["members"][i % 3], folder)
        if i >= 3:
            weights = load_file(folder / "model.safetensors")
            g = torch.Generator().manual_seed(i)
            noisy = {k: v + 0.02 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in weights.items()}
            save_file(noisy, folder / "model.safetensors", metadata={"format": "pt"})
        members.append(str(folder))
    conf = yaml.safe_load(tiny_config.read_text())
    conf.update(models=members, generations=1)
    conf["data"]["batch_size"] = 2  # 60 dev batches: every one of the 32 shards gets some
    config = tmp_path / "sixteen.yaml"
    config.write_text(yaml.safe_dump(conf))
    one = _run(config, tmp_path / "a", "--set", "shards=1")
    many = _run(config, tmp_path / "b", "--set", "shards=32", "--set", "evaluate_tasks=4")
    assert one["generations"] == many["generations"] and one["fused_model_sha256"] == many["fused_model_sha256"]
    assert one["generations"][1]["evaluations"] >= 16
    store = Path(many["fused_model_uri"].removeprefix("file://")).parents[1]
    assert len(list(store.glob("gen=1/round=0/cand=*/shard=*.json"))) == 16 * 32


@pytest.mark.parametrize("schedule", ["sequential", "generational"])
def test_plain_mode_never_loses_fitness(tiny_config, tmp_path, schedule):
    summary = _run(tiny_config, tmp_path / schedule, "--set", "mode=plain", "--set", f"schedule={schedule}")
    best = [g["best_fitness"] for g in summary["generations"]]
    assert best == sorted(best)
    assert len(summary["lineage"]) == 3 * 3


@pytest.mark.parametrize(
    "override, message",
    [
        ("bogus=1", "bogus: unknown key"),
        ("F=2.5", "F:"),
        ("generations=-1", "generations:"),
    ],
)
def test_bad_config_fails_before_compute(tiny_config, tmp_path, capsys, override, message):
    assert main(["run", str(tiny_config), "--set", override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_a_round_must_fit_one_mapped_airflow_task(tiny_config):
    """A generational round scores every model on every shard, in one mapped task of at most 1024 tasks."""
    from tasks.config import ConfigError, EvolverConfig

    conf = yaml.safe_load(tiny_config.read_text())
    conf["models"] = conf["models"] * 2  # 6 models
    assert EvolverConfig.from_dict({**conf, "shards": 170}).shards == 170  # 1020 work items
    with pytest.raises(ConfigError, match="6 candidates x 171 shards = 1026 evaluate tasks in one round"):
        EvolverConfig.from_dict({**conf, "shards": 171})
    # Packed into fewer tasks, the same work items fit.
    assert EvolverConfig.from_dict({**conf, "shards": 171, "evaluate_tasks": 16}).evaluate_tasks == 16
    # The sequential schedule in merge mode scores one candidate per round.
    assert EvolverConfig.from_dict({**conf, "shards": 256, "schedule": "sequential"}).shards == 256
    with pytest.raises(ConfigError, match="6 candidates x 256 shards"):
        EvolverConfig.from_dict({**conf, "shards": 256, "schedule": "sequential", "mode": "plain"})


@pytest.mark.parametrize("n_items, tasks, sizes", [(9, None, [1] * 9), (9, 2, [5, 4]), (6, 2, [3, 3]), (2, 4, [1, 1]), (7, 3, [3, 2, 2])])
def test_work_items_pack_into_at_most_the_configured_tasks_in_order(n_items, tasks, sizes):
    from tasks.stages import pack

    items = [{"candidate": i // 3, "shard": i % 3} for i in range(n_items)]
    packed = pack(items, tasks)
    assert [len(batch) for batch in packed] == sizes
    assert [item for batch in packed for item in batch] == items  # every item once, in order


def _champion_config(tiny_config, tmp_path, first_member: str) -> Path:
    """The tiny config with its first member replaced by `first_member` (a Model Registry URI), in a new store."""
    conf = yaml.safe_load(tiny_config.read_text())
    conf.update(models=[first_member, *conf["models"][1:]], generations=1, store=str(tmp_path / "next-store"))
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "next.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def test_the_registered_champion_takes_part_in_the_next_fusion(tiny_config, tmp_path, capsys):
    """`models:/evolver-fused@champion` as a member: the version the alias names when the run starts is
    downloaded, fused like a folder, and pinned in the run's record, summary and MLflow tags."""
    from safetensors.torch import load_file

    from tasks import tracking

    first = _run(tiny_config, tmp_path / "first", "--set", "generations=1")  # version 1, champion
    following = _run(_champion_config(tiny_config, tmp_path, "models:/evolver-fused@champion"), tmp_path / "next")
    pinned = {"name": "evolver-fused", "alias": "champion", "version": "1", "run_id": first["mlflow_run_id"]}
    assert following["members"][0] == {"source": "models:/evolver-fused@champion", "registered_model": pinned}
    assert following["members"][1] == {"source": yaml.safe_load(tiny_config.read_text())["models"][1]}
    store = next((tmp_path / "next-store").iterdir())
    champion = load_file(Path(first["fused_model_uri"].removeprefix("file://")) / "model.safetensors")
    member = load_file(store / "members" / "init" / "ind=0.safetensors")
    assert member and all(torch.equal(member[name], champion[name]) for name in member)
    uri = yaml.safe_load(tiny_config.read_text())["tracking_uri"]
    tags = tracking.client_for(uri).get_run(following["mlflow_run_id"]).data.tags
    assert tags["member.0"] == "models:/evolver-fused@champion = version 1"

    # An alias or version the registry lacks fails before anything is computed, naming it.
    for source, words in (("models:/evolver-fused@stable", "no alias 'stable'"), ("models:/evolver-fused/9", "no version 9"), ("models:/a/b/c", "models:/<name>@<alias>")):
        config = _champion_config(tiny_config, tmp_path / source.replace("/", "_"), source)
        assert main(["run", str(config), "--output", str(tmp_path / "bad")]) == 2
        assert words in capsys.readouterr().err
        assert not list(config.parent.glob("next-store/*/gen=*"))
