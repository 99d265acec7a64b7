import json

import pytest

from tasks.cli import main


def _run(config, out, *extra):
    assert main(["run", str(config), "--output", str(out), *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def test_same_seed_and_any_shard_count_give_identical_results(tiny_config, tmp_path):
    one = _run(tiny_config, tmp_path / "a", "--set", "shards=1")
    three = _run(tiny_config, tmp_path / "b", "--set", "shards=3")
    again = _run(tiny_config, tmp_path / "c", "--set", "shards=1")
    assert one["generations"] == three["generations"] == again["generations"]
    assert one["fused_model_sha256"] == three["fused_model_sha256"] == again["fused_model_sha256"]
    best = [g["best_fitness"] for g in one["generations"]]
    assert best == sorted(best), "merged dev fitness must never decrease"
    assert one["final"]["dev"]["macro_f1"] == best[-1]
    assert set(one["final"]["heldout"]) == {"books", "food", "travel", "ood"}


@pytest.mark.parametrize("schedule", ["sequential", "generational"])
def test_plain_mode_never_loses_fitness(tiny_config, tmp_path, schedule):
    summary = _run(tiny_config, tmp_path / schedule, "--set", "mode=plain", "--set", f"schedule={schedule}")
    best = [g["best_fitness"] for g in summary["generations"]]
    assert best == sorted(best)
    assert len(summary["lineage"]) == 3 * 3


@pytest.mark.parametrize(
    "override, message",
    [("bogus=1", "bogus: unknown key"), ("F=2.5", "F:"), ("generations=-1", "generations:")],
)
def test_bad_config_fails_before_compute(tiny_config, tmp_path, capsys, override, message):
    assert main(["run", str(tiny_config), "--set", override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "store").exists()
