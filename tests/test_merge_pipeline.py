"""Every registered merging method runs through the pipeline: as a plain baseline (`generations: 0`) and with
Evolver inside it, which never accepts an offspring that lowers the merged dev score."""

import json

import pytest

from tasks.cli import main
from tasks.merge import MERGER_NAMES


def _run(config, out, *extra):
    assert main(["run", str(config), "--output", str(out), "--set", "baselines=false", "--set", "registered_model=null", *extra]) == 0
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("merger", MERGER_NAMES)
def test_evolver_inside_each_method_never_lowers_the_merged_score(tiny_config, tiny_population, tmp_path, merger):
    base = f"base_model={tiny_population['base']}"
    baseline = _run(tiny_config, tmp_path / "baseline", "--set", f"merger={merger}", "--set", base, "--set", "generations=0")
    evolved = _run(tiny_config, tmp_path / "evolved", "--set", f"merger={merger}", "--set", base, "--set", "generations=2", "--set", "shards=1")

    assert [g["generation"] for g in baseline["generations"]] == [0] and baseline["lineage"] == []
    assert baseline["final"]["dev"]["macro_f1"] == baseline["generations"][0]["best_fitness"]
    # Same starting point: generation 0 of the evolved run is the plain merge.
    assert evolved["generations"][0]["best_fitness"] == baseline["generations"][0]["best_fitness"]
    best = [g["best_fitness"] for g in evolved["generations"]]
    assert best == sorted(best), f"{merger}: the merged dev score decreased"
    for entry in evolved["lineage"]:
        # Accepted offspring improve on the generation's starting score (generational: each improver on its own,
        # and all of them together only if that beats the best single one).
        assert not entry["accepted"] or entry["fitness"] > best[entry["generation"] - 1], f"{merger}: {entry}"
    assert evolved["final"]["dev"]["macro_f1"] == best[-1]


def test_statistics_are_computed_once_or_per_generation(tiny_config, tmp_path):
    once = _run(tiny_config, tmp_path / "once", "--set", "merger=fisher", "--set", "generations=2")
    again = _run(tiny_config, tmp_path / "recompute", "--set", "merger=fisher", "--set", "generations=2", "--set", "merge_params.fisher.recompute=true")
    stats = lambda summary: sorted(str(p.relative_to(p.parents[2])) for p in (tmp_path / "store" / summary["run_key"] / "stats").rglob("*.safetensors"))
    assert stats(once) == [f"stats/init/ind={i}.safetensors" for i in range(3)]
    assert stats(again) == sorted([f"stats/init/ind={i}.safetensors" for i in range(3)] + [f"stats/gen={g}/ind={i}.safetensors" for g in (1, 2) for i in range(3)])


def test_task_vector_methods_need_the_base_model(tiny_config, capsys):
    assert main(["run", str(tiny_config), "--set", "merger=ties"]) == 2
    assert "needs base_model" in capsys.readouterr().err


def test_a_merge_by_blocks_of_rows_equals_the_whole_tensor_merge(tiny_config, tiny_population, monkeypatch):
    """A tensor too large to hold N times is merged a block of rows at a time (`stages.row_blocks`); for every
    method the result is the same bits as merging it whole: TIES's trim thresholds are computed over the whole
    tensor first, DARE's masks continue from block to block (for each of its combines). RegMean's weights with a
    Gram matrix are merged whole (each block would repeat the solve)."""
    import torch
    import yaml

    from tasks import stages
    from tasks.merge import METHODS

    conf = {**yaml.safe_load(tiny_config.read_text()), "base_model": str(tiny_population["base"]), "generations": 0}
    dare_combines = {"dare ties": {"combine": "ties", "density": 0.3, "lam": 0.8}, "dare average": {"combine": "average", "p": 0.5}}
    for label in [*METHODS, *dare_combines]:
        merger = label.split()[0]
        method = METHODS[merger]
        run_conf = {**conf, "merger": merger, "merge_params": {merger: dare_combines.get(label, {})}}
        run_id = f"blocks-{label.replace(' ', '-')}"
        stages.download_models(run_conf, run_id)
        stages.init_population(run_conf, run_id)
        run = stages.Run(run_conf, run_id)
        members = run.store.get_json("init.json")["members"]
        monkeypatch.setattr(stages, "MERGE_BLOCK_BYTES", 10**12)
        whole = dict(stages._candidate_tensors(run, members, 0))
        monkeypatch.setattr(stages, "MERGE_BLOCK_BYTES", 4096)
        cut = [name for name, t in whole.items() if len(stages.row_blocks(tuple(t.shape), 4 * (len(members) + 2), True)) > 1]
        assert len(cut) > 5, "the tiny model must have tensors that are cut into blocks"
        blocks = dict(stages._candidate_tensors(run, members, 0))
        assert blocks.keys() == whole.keys()
        for name in whole:
            assert torch.equal(blocks[name], whole[name]), f"{label}: {name} differs when merged by blocks of rows"
        assert method.row_blocks
