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


def _pickled(member, folder):
    shutil.copytree(member, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def test_pickle_checkpoints_need_allow_pickle_and_then_fuse_as_their_safetensors_would(tiny_population, tiny_config, tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the conversion cache
    members = [str(m) for m in tiny_population["members"][:3]]
    pickled = _pickled(members[1], tmp_path / "pickled")
    with pytest.raises(modelpool.ModelNotFound, match="allow_pickle"):
        modelpool.as_safetensors(pickled, allow_pickle=False)

    def run(models, out, *extra):
        argv = ["run", str(tiny_config), "--set", f"models=[{','.join(models)}]", "--set", "generations=1", "--output", str(out), *extra]
        argv += ["--set", f"store={tmp_path / out.name / 'store'}", "--set", f"tracking_uri=sqlite:///{tmp_path / out.name / 'mlflow.db'}"]
        return main(argv), out / "summary.json"

    assert run([members[0], str(pickled), members[2]], tmp_path / "refused")[0] == 2
    code, pickle_summary = run([members[0], str(pickled), members[2]], tmp_path / "pickle", "--set", "allow_pickle=true")
    assert code == 0
    code, plain_summary = run(members, tmp_path / "plain")
    assert code == 0
    assert json.loads(pickle_summary.read_text())["fused_model_sha256"] == json.loads(plain_summary.read_text())["fused_model_sha256"]


def test_a_pickle_that_would_run_code_is_refused_even_when_allowed(tiny_population, tmp_path):
    class RunsCode:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('ran')" % str(tmp_path / "ran"),))

    folder = tmp_path / "evil"
    shutil.copytree(tiny_population["members"][0], folder)
    (folder / "model.safetensors").unlink()
    torch.save({"classifier.weight": RunsCode()}, folder / "pytorch_model.bin")
    with pytest.raises(modelpool.ModelNotFound, match="tensors only"):
        modelpool.as_safetensors(folder, allow_pickle=True, cache_root=tmp_path / "cache")
    assert not (tmp_path / "ran").exists()
    assert not list((tmp_path / "cache").iterdir())


def test_missing_model_is_named(tmp_path):
    with pytest.raises(modelpool.ModelNotFound, match="nowhere"):
        modelpool.resolve(str(tmp_path / "nowhere"))


def test_exclude_keeps_heads_out_of_evolution(tiny_population):
    names = modelpool.mergeable_names(tiny_population["members"][0], [r".*classifier.*"])
    assert names and not any("classifier" in n for n in names)


def test_linked_members_are_the_checkpoints_files_and_fuse_as_copied_ones_do(tiny_population, tiny_config, tmp_path):
    """member_files: link puts no second copy of a member on disk (the store's file is the checkpoint's
    inode) and changes nothing in the result; the default copies."""
    import json
    import os

    members = [shutil.copytree(m, tmp_path / "members" / m.name) for m in tiny_population["members"][:3]]

    def run(mode):
        out = tmp_path / mode
        argv = ["run", str(tiny_config), "--set", f"models=[{','.join(map(str, members))}]", "--set", "generations=1", "--output", str(out)]
        argv += ["--set", f"store={out / 'store'}", "--set", f"tracking_uri=sqlite:///{out / 'mlflow.db'}", "--set", f"member_files={mode}"]
        assert main(argv) == 0
        [run_folder] = (out / "store").iterdir()
        return json.loads((out / "summary.json").read_text())["fused_model_sha256"], run_folder

    copied_sha, copied = run("copy")
    linked_sha, linked = run("link")
    assert linked_sha == copied_sha
    for i, member in enumerate(members):
        assert os.path.samefile(linked / f"members/init/ind={i}.safetensors", member / "model.safetensors")
        assert not os.path.samefile(copied / f"members/init/ind={i}.safetensors", member / "model.safetensors")
    assert os.path.samefile(linked / "template/model.safetensors", members[0] / "model.safetensors")
    assert os.stat(members[0] / "model.safetensors").st_nlink == 3  # itself, its member and template links; the copy run added none
