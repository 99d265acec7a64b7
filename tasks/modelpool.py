"""The model pool: where the fine-tuned checkpoints come from, and whether they can be fused.

A source is a local folder (config.json + safetensors) or a Hugging Face hub id. Every check reads only
safetensors headers, so an incompatible population fails in seconds, before any weight is loaded; weights
are then read one tensor at a time (`tasks.store.TensorFile`), mergekit-style.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from tasks.config import InputError


class IncompatibleCheckpoints(InputError):
    """Members that cannot be fused; the message lists every difference."""


class ModelNotFound(InputError):
    """A model source that resolves to no checkpoint."""


_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]


# A version in the MLflow Model Registry: `models:/<name>@<alias>` or `models:/<name>/<version>`.
_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[0-9]+))$")


def resolve(source: str, tracking_uri: str | None = None) -> Path:
    """A local snapshot of `source`: the folder itself, a checkpoint folder in object storage (`s3://bucket/path`,
    downloaded to the verified S3 cache), a Model Registry version (`models:/name@alias` or `models:/name/3`,
    through the MLflow server at `tracking_uri`), or a hub download (cached by huggingface_hub; the latest
    revision)."""
    if source.startswith("s3://"):
        return _from_object_storage(source)
    if source.startswith("models:/"):
        return registry_download(registry_version(source, tracking_uri))
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFound(f"model {source!r} is a file; expected a checkpoint folder")
        return path.resolve()
    if source.startswith(("/", ".", "~")) or "://" in source:
        raise ModelNotFound(f"model {source!r} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=source, allow_patterns=_HUB_PATTERNS))
    except Exception as err:  # offline mode, unknown repo, network: one clear line either way
        raise ModelNotFound(f"model {source!r} is neither a local folder nor a reachable hub id: {err}") from None


def locate(source: str, tracking_uri: str | None = None) -> tuple[Path, dict[str, Any]]:
    """`resolve`, and where the checkpoint came from: the source as given and, for a Model Registry version, the
    name, alias, version and run it resolved to (the run's record of its members)."""
    if not source.startswith("models:/"):
        return resolve(source), {"source": source}
    ref = registry_version(source, tracking_uri)
    return registry_download(ref), {"source": source, "registered_model": {k: ref[k] for k in ("name", "alias", "version", "run_id")}}


def registry_version(source: str, tracking_uri: str | None) -> dict[str, str]:
    """Which registered model version `source` names now, and the run and artifact that hold its files. An
    alias is resolved once, when the run downloads its members: the version is pinned from then on."""
    match = _REGISTRY_URI.match(source)
    if match is None:
        raise ModelNotFound(f"model {source!r}: a Model Registry URI is models:/<name>@<alias> or models:/<name>/<version>")
    if tracking_uri is None:
        raise ModelNotFound(f"model {source!r}: a Model Registry URI needs the run's tracking_uri")
    from mlflow.exceptions import MlflowException

    from tasks.tracking import client_for

    name, alias = match["name"], match["alias"]
    try:
        client = client_for(tracking_uri)
        version = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, match["version"])
    except MlflowException as err:
        named = f"alias {alias!r}" if alias else f"version {match['version']}"
        raise ModelNotFound(f"model {source!r}: the Model Registry has no {named} of {name!r} ({err.error_code})") from None
    prefix = f"runs:/{version.run_id}/"
    if not version.source.startswith(prefix):  # our registrations; a logged model's files live elsewhere
        raise ModelNotFound(f"model {source!r}: version {version.version} comes from {version.source}, not from a run's artifacts")
    return {"source": source, "name": name, "alias": alias or "", "version": str(version.version), "run_id": version.run_id,
            "artifact": version.source.removeprefix(prefix), "tracking_uri": tracking_uri}  # fmt: skip


def registry_download(ref: dict[str, str]) -> Path:
    """The version's files in a local cache keyed by its run (run ids are unique across tracking servers, and a
    run's artifacts never change): downloaded once, into a temporary folder renamed into place when complete."""
    import os
    import shutil
    import tempfile

    from tasks.tracking import download_model

    root = Path(os.environ.get("EVOLVER_REGISTRY_CACHE", "~/.cache/evolver/registry")).expanduser()
    folder = root / ref["run_id"] / ref["artifact"]
    if not (folder / "config.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=".download-", dir=folder.parent))
        try:
            shutil.move(str(download_model(ref["tracking_uri"], ref["run_id"], partial, ref["artifact"])), str(partial / "files"))
            if folder.exists() and not (folder / "config.json").is_file():  # not a checkpoint: replace it
                shutil.rmtree(folder)
            try:
                os.replace(partial / "files", folder)
            except OSError:  # another process put the same files in place first
                if not (folder / "config.json").is_file():
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    if not (folder / "config.json").is_file():
        raise ModelNotFound(f"model {ref['source']!r}: version {ref['version']} of {ref['name']!r} holds no config.json; not a checkpoint")
    return folder


def _from_object_storage(source: str) -> Path:
    from tasks.store import open_store

    store = open_store(source.rstrip("/"))
    files = [key for key in store.list_keys() if "/" not in key]  # the checkpoint's own files, not sub-folders
    if "config.json" not in files:
        raise ModelNotFound(f"model {source!r}: no config.json under that prefix; expected a checkpoint folder")
    local = [store.local_path(key) for key in files]  # verified copies, all in one cache folder
    return local[0].parent


def _pickle_shards(folder: Path) -> list[Path]:
    index = folder / "pytorch_model.bin.index.json"
    if index.is_file():
        return [folder / shard for shard in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return [folder / "pytorch_model.bin"] if (folder / "pytorch_model.bin").is_file() else []


def as_safetensors(folder: Path, allow_pickle: bool, cache_root: Path | None = None) -> Path:
    """`folder` when it holds safetensors (or nothing this can read: `safetensors_files` names what is missing).
    A pickle checkpoint is refused, or with `allow_pickle` read by torch.load(weights_only=True), which
    unpickles tensors only, into a safetensors copy keyed by the pickles' sha256, written tensor by tensor."""
    pickles = _pickle_shards(folder)
    if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file() or not pickles:
        return folder
    if not allow_pickle:
        raise ModelNotFound(
            f"{folder}: a pickle checkpoint ({pickles[0].name}), which can run code when loaded; convert it to safetensors, "
            "or set allow_pickle: true to read it with torch.load(weights_only=True)"
        )
    import hashlib
    import shutil

    from tasks.store import widest_first, write_tensor_stream

    digest = hashlib.sha256()
    for shard in pickles:
        with shard.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    out = Path(cache_root or "~/.cache/evolver/converted").expanduser() / digest.hexdigest()
    if (out / "model.safetensors").is_file():
        return out  # written last, then renamed into place: present means complete
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for file in folder.iterdir():
        if file.is_file() and file not in pickles and file.name != "pytorch_model.bin.index.json":
            shutil.copyfile(file, partial / file.name)
    try:
        # mmap: the shards' tensors are read as they are written, not held whole.
        loaded = [torch.load(shard, map_location="cpu", weights_only=True, mmap=True) for shard in pickles]
    except Exception as err:  # anything but plain tensors (or a damaged file): refused, nothing run
        shutil.rmtree(partial)
        raise ModelNotFound(f"{folder}: {pickles[0].name} cannot be read as tensors only (torch.load weights_only=True): {err}") from None
    tensors = {name: tensor for part in loaded for name, tensor in (part.items() if isinstance(part, dict) else [("", part)])}
    if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        shutil.rmtree(partial)
        raise ModelNotFound(f"{folder}: {pickles[0].name} is not a plain state dict of tensors")
    specs = widest_first({name: (t.dtype, tuple(t.shape)) for name, t in tensors.items()})
    with open(partial / "model.safetensors", "wb") as f:
        write_tensor_stream(f, specs, ((name, tensors[name].contiguous()) for name in specs), metadata={"format": "pt"})
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / shard for shard in shards]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise ModelNotFound(f"{folder}: no model.safetensors (or index); save the checkpoint with safe_serialization")


def tensor_specs(folder: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (safetensors dtype code, shape) from the headers alone."""
    from tasks.store import TensorFile

    specs = {}
    for file in safetensors_files(folder):
        with TensorFile(file) as reader:
            specs.update(reader.header_specs())
    return specs


def torch_specs(folder: Path, names: Sequence[str]) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """name -> (torch dtype, shape) of `names`, in that order, from the headers alone."""
    from tasks.store import torch_dtype

    specs = tensor_specs(folder)
    return {name: (torch_dtype(specs[name][0], f"{folder}: tensor {name}"), specs[name][1]) for name in names}


# Files whose `auto_map` points transformers at Python code shipped with the checkpoint.
_CODE_CONFIGS = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")


def check_no_custom_code(folder: Path) -> None:
    """Refuse a checkpoint that brings its own code: transformers runs it only with trust_remote_code, which
    this project never sets, so such a model would fail later or load as something else. Say so now, by name."""
    found = sorted(f.name for f in folder.glob("*.py"))
    for name in _CODE_CONFIGS:
        path = folder / name
        if path.is_file() and "auto_map" in (json.loads(path.read_text()) or {}):
            found.append(f"auto_map in {name}")
    if found:
        raise IncompatibleCheckpoints(
            f"{folder}: custom code ({', '.join(found)}); no checkpoint's own code is ever run here: "
            "use a checkpoint of a built-in transformers architecture"
        )


def _vocabulary_problems(folders: Sequence[Path]) -> list[str]:
    reference, problems = folders[0], []
    ref_vocabulary = _vocabulary(reference)
    for folder in folders[1:]:
        vocabulary = _vocabulary(folder)
        if None not in (vocabulary, ref_vocabulary) and vocabulary != ref_vocabulary:
            moved = sum(ref_vocabulary.get(token) != i for token, i in vocabulary.items())
            problems.append(f"{folder}: its tokenizer gives {moved} tokens other ids than {reference}'s: the same embedding rows would mean other words")
    return problems


def check_compatible(folders: Sequence[Path]) -> None:
    """Same architecture, parameter names, shapes and dtypes; raises with every difference listed."""
    problems = _vocabulary_problems(folders)
    reference = folders[0]
    ref_arch = _architecture(reference)
    ref_specs = tensor_specs(reference)
    for folder in folders[1:]:
        arch = _architecture(folder)
        if arch != ref_arch:
            problems.append(f"{folder}: architecture {arch} differs from {reference}: {ref_arch}")
        specs = tensor_specs(folder)
        for name in sorted(set(ref_specs) - set(specs)):
            problems.append(f"{folder}: lacks tensor {name}")
        for name in sorted(set(specs) - set(ref_specs)):
            problems.append(f"{folder}: has extra tensor {name}")
        for name in sorted(set(specs) & set(ref_specs)):
            if specs[name] != ref_specs[name]:
                (dtype, shape), (ref_dtype, ref_shape) = specs[name], ref_specs[name]
                problems.append(f"{folder}: {name} is {dtype}{list(shape)}, {reference} has {ref_dtype}{list(ref_shape)}")
    if problems:
        raise IncompatibleCheckpoints(
            f"{len(problems)} incompatibilities between the checkpoints:\n  " + "\n  ".join(problems)
        )


# What a config.json says about the body: members of different tasks must agree on these (their heads may differ).
_BODY_CONFIG = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "max_position_embeddings", "type_vocab_size", "d_model", "num_layers", "n_layer", "n_embd")


def shared_body(folders: Sequence[Path], task_types: Sequence[str], exclude: Sequence[str], tasks: Sequence[str] | None = None) -> list[str]:
    """Cross-task fusion: the names of the body parameters every member has, evolved and merged; raises with
    every difference listed where the bodies disagree (config, tokenizer, shapes, dtypes).

    A member's body is what its model class keeps under `base_model_prefix` (`bert.`, `roberta.`, ...); the head
    is the rest (`classifier.*`) and stays the member's own. A body tensor only some members have stays theirs
    too: BERT's pooler feeds sequence heads, and token classification models have none. `tasks` name the
    members in messages.
    """
    patterns = [re.compile(p) for p in exclude]
    problems = _vocabulary_problems(folders)
    bodies = []
    for folder, task_type in zip(folders, task_types):
        model = meta_model(folder, task_type)
        prefix, stored = model.base_model_prefix + ".", tensor_specs(folder)
        parameters = (n for n, _ in model.named_parameters() if n.startswith(prefix) and n in stored and not any(p.search(n) for p in patterns))
        bodies.append({n: stored[n] for n in parameters})
    named = [f"task {task} ({folder})" for task, folder in zip(tasks, folders)] if tasks else [str(f) for f in folders]
    reference = json.loads((folders[0] / "config.json").read_text())
    for folder, who in zip(folders[1:], named[1:]):
        config = json.loads((folder / "config.json").read_text())
        differ = [f"{k} {config.get(k)} (vs {reference.get(k)})" for k in _BODY_CONFIG if config.get(k) != reference.get(k)]
        if differ:
            problems.append(f"{who}: its body differs from {named[0]}'s: {', '.join(differ)}")
    shared = sorted(set.intersection(*(set(b) for b in bodies)))
    for who, body in zip(named[1:], bodies[1:]):
        for name in shared:
            if body[name] != bodies[0][name]:
                (dtype, shape), (ref_dtype, ref_shape) = body[name], bodies[0][name]
                problems.append(f"{who}: {name} is {dtype}{list(shape)}, {named[0]} has {ref_dtype}{list(ref_shape)}")
    if problems:
        raise IncompatibleCheckpoints(f"{len(problems)} incompatibilities between the members' bodies:\n  " + "\n  ".join(problems))
    if not shared:
        raise IncompatibleCheckpoints(f"the members share no body parameter to fuse (exclude={list(exclude)})")
    return shared


_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


def _vocabulary(folder: Path) -> dict[str, int] | None:
    """token -> id of the folder's tokenizer, or None where it ships none (the first member's is used)."""
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder).get_vocab()


def _architecture(folder: Path) -> tuple[str, tuple[str, ...], int]:
    """Model type, architectures and label count: what must agree beyond tensor names and shapes."""
    config = json.loads((folder / "config.json").read_text())
    return config.get("model_type", "?"), tuple(config.get("architectures") or ()), labels(folder)[1]


def is_encoder_decoder(folder: Path | str) -> bool:
    return bool(json.loads((Path(folder) / "config.json").read_text()).get("is_encoder_decoder"))


def auto_class(task_type: str, folder: Path | str | None = None):
    """The transformers Auto class whose head scores `task_type` (AutoModelForSequenceClassification, ...); for
    the checkpoint in `folder`, where the type scores decoders and encoder-decoders alike (T5: Seq2SeqLM)."""
    import transformers

    from tasks.taskpool.registry import get_task_type

    kind = get_task_type(task_type)
    seq2seq = kind.seq2seq_auto_class is not None and folder is not None and is_encoder_decoder(folder)
    return getattr(transformers, kind.seq2seq_auto_class if seq2seq else kind.auto_class)


def meta_model(folder: Path, task_type: str = "sequence_classification") -> torch.nn.Module:
    """The checkpoint's model class with its `task_type` head, on the meta device: its structure, no weights."""
    from transformers import AutoConfig

    with torch.device("meta"):
        return auto_class(task_type, folder).from_config(AutoConfig.from_pretrained(folder))


def mergeable_names(folder: Path, exclude: Sequence[str], task_type: str = "sequence_classification") -> list[str]:
    """Stored named parameters (never buffers) that no exclude regex matches, in a fixed order."""
    parameters = {name for name, _ in meta_model(folder, task_type).named_parameters()}
    stored = tensor_specs(folder)
    patterns = [re.compile(p) for p in exclude]
    names = sorted(n for n in stored if n in parameters and not any(p.search(n) for p in patterns))
    if not names:
        raise IncompatibleCheckpoints(f"{folder}: no parameter is left to evolve after exclude={list(exclude)}")
    return names


def base_names(base: Path, member: Path, names: Sequence[str]) -> dict[str, str]:
    """member tensor name -> the base model's name for it, for every tensor the base has.

    A bare pre-trained encoder stores `embeddings.word_embeddings.weight` where the task model has
    `bert.embeddings.word_embeddings.weight`, so a name also matches with its first component dropped. Tensors
    the base lacks (a freshly initialised head) are left out; a matched tensor of another shape is an error.
    """
    base_specs, member_specs = tensor_specs(base), tensor_specs(member)
    mapping, problems = {}, []
    for name in names:
        candidates = [name, name.split(".", 1)[-1]]
        found = next((c for c in candidates if c in base_specs), None)
        if found is None:
            continue
        if base_specs[found][1] != member_specs[name][1]:
            problems.append(f"{name}: base {base} has {found} of shape {list(base_specs[found][1])}, the members {list(member_specs[name][1])}")
        mapping[name] = found
    if problems:
        raise IncompatibleCheckpoints("base_model does not fit the members:\n  " + "\n  ".join(problems))
    if not mapping:
        raise IncompatibleCheckpoints(f"base_model {base} shares no tensor with the members: is it their pre-trained model?")
    return mapping


def iter_tensors(folder: Path, names: Sequence[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) one at a time, in the order given; each file is opened once."""
    from contextlib import ExitStack

    from tasks.store import TensorFile

    with ExitStack() as stack:
        reader_of = {}
        for file in safetensors_files(folder):
            reader = stack.enter_context(TensorFile(file))
            reader_of.update({name: reader for name in reader.keys()})
        for name in names:
            yield name, reader_of[name].get_tensor(name)


def check_finite(folder: Path, names: Sequence[str]) -> None:
    bad = [name for name, tensor in iter_tensors(folder, names) if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise IncompatibleCheckpoints(f"{folder}: non-finite (NaN or inf) values in {', '.join(bad[:10])}" + (" ..." if len(bad) > 10 else ""))


def architectures(folder: Path) -> list[str]:
    """The model classes config.json names (empty where it names none)."""
    return list(json.loads((Path(folder) / "config.json").read_text()).get("architectures") or [])


def labels(folder: Path) -> tuple[dict[str, int], int]:
    """The members' label2id and label count (from config.json, as transformers writes it)."""
    config = json.loads((folder / "config.json").read_text())
    label2id = {str(k): int(v) for k, v in (config.get("label2id") or {}).items()}
    return label2id, len(config.get("id2label") or {}) or config.get("num_labels") or len(label2id) or 2


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but no CUDA device is visible")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def load_dtype(dtype: str) -> torch.dtype | str:
    """The config's `dtype` as `from_pretrained` takes it: `checkpoint` is the checkpoint's own ("auto")."""
    return "auto" if dtype == "checkpoint" else getattr(torch, dtype)


def pad_token_id(folder: Path | str) -> int:
    """The id batches are padded with. A decoder's sequence head scores each example at its last token that is
    not this id, so the model and the tokenizer must agree on it: the config's `pad_token_id`, else the
    tokenizer's pad token, else its end-of-sequence token (GPT-2 and Llama ship no pad token; padding on the
    right never lets a real token attend to a pad, so an example scores the same in any batch)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    if config.get("pad_token_id") is not None:
        return int(config["pad_token_id"])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    eos = config.get("eos_token_id")
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, eos[0] if isinstance(eos, list) and eos else eos):
        if candidate is not None:
            return int(candidate)
    raise IncompatibleCheckpoints(
        f"{folder}: neither config.json nor the tokenizer names a pad or end-of-sequence token, so batches cannot be padded; "
        "set pad_token_id in config.json"
    )


def load_tokenizer(folder: Path | str):
    """The checkpoint's tokenizer, padding on the right with `pad_token_id(folder)`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    pad = pad_token_id(folder)
    if tokenizer.pad_token_id != pad:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
    tokenizer.padding_side = "right"
    return tokenizer


def load_model(folder: Path | str, task_type: str = "sequence_classification", dtype: str = "checkpoint") -> torch.nn.Module:
    """The checkpoint with its `task_type` head, its config's pad_token_id set as `load_tokenizer` pads."""
    model = auto_class(task_type, folder).from_pretrained(folder, dtype=load_dtype(dtype))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id(folder)
    return model


# One template per task of a cross-task run (each member brings its head), plus the float32 one statistics use.
@lru_cache(maxsize=8)
def template_model(folder: str, device: str, dtype: str = "checkpoint", task_type: str = "sequence_classification") -> torch.nn.Module:
    """The first member loaded once per process; candidates are copied into it tensor by tensor."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per task process is noise in Airflow's logs
    return load_model(folder, task_type, dtype).to(device).eval()


def model_with(
    folder: Path,
    tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    device: torch.device,
    dtype: str = "checkpoint",
    task_type: str = "sequence_classification",
) -> torch.nn.Module:
    """The template model with `tensors` (a subset of its parameters) replaced, cast to the model's dtype.
    `tensors` may be a stream of (name, tensor) pairs: each is copied in and dropped, so the model is the only
    whole copy of the weights in memory."""
    model = template_model(str(folder), str(device), dtype, task_type)
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in tensors.items() if isinstance(tensors, Mapping) else tensors:
            if name not in state:
                raise IncompatibleCheckpoints(f"tensor {name} is not a parameter of the model in {folder}")
            state[name].copy_(tensor)
            del tensor  # before the stream makes the next one
    return model
