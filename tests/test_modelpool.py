import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tasks import modelpool
from tasks.cli import main


def _copy(src, dst, edit):
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_every_difference_is_listed(tiny_population, tmp_path):
    first = tiny_population["members"][0]
    name = "bert.encoder.layer.0.attention.self.query.weight"

    def reshape_and_drop(t):
        t[name] = torch.zeros(3, 3)
        del t["classifier.bias"]

    other = _copy(first, tmp_path / "bad", reshape_and_drop)
    with pytest.raises(modelpool.IncompatibleCheckpoints) as err:
        modelpool.check_compatible([first, other])
    assert name in str(err.value) and "classifier.bias" in str(err.value) and "2 incompatibilities" in str(err.value)


def test_nan_weights_fail_before_compute(tiny_population, tiny_config, tmp_path):
    first = tiny_population["members"][0]
    nan = _copy(first, tmp_path / "nan", lambda t: t["classifier.weight"].fill_(float("nan")))
    with pytest.raises(modelpool.IncompatibleCheckpoints, match="classifier.weight"):
        modelpool.check_finite(nan, ["classifier.weight"])
    assert main(["run", str(tiny_config), "--set", f"models=[{first},{nan}]"]) == 2


@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json", "modeling_evil.py"])
def test_checkpoints_with_their_own_code_are_refused_before_compute(tiny_population, tiny_config, tmp_path, where):
    import json

    first = tiny_population["members"][0]
    custom = tmp_path / "custom"
    shutil.copytree(first, custom)
    if where.endswith(".py"):
        (custom / where).write_text("raise SystemExit('remote code ran')\n")
    else:
        path = custom / where
        config = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**config, "auto_map": {"AutoModelForSequenceClassification": "modeling_evil.Evil"}}))
    with pytest.raises(modelpool.IncompatibleCheckpoints, match=f"custom code.*{where if where.endswith('.py') else 'auto_map in ' + where}"):
        modelpool.check_no_custom_code(custom)
    modelpool.check_no_custom_code(first)  # a plain checkpoint passes
    tracking = tmp_path / "mlflow.db"
    assert main(["run", str(tiny_config), "--set", f"models=[{first},{custom}]", "--set", f"tracking_uri=sqlite:///{tracking}"]) == 2
    assert not tracking.exists(), "refused before any MLflow run was opened"


def test_missing_model_is_named(tmp_path):
    with pytest.raises(modelpool.ModelNotFound, match="nowhere"):
        modelpool.resolve(str(tmp_path / "nowhere"))


def test_exclude_keeps_heads_out_of_evolution(tiny_population):
    names = modelpool.mergeable_names(tiny_population["members"][0], [r".*classifier.*"])
    assert names and not any("classifier" in n for n in names)
