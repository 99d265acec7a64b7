"""Decoder-only members: GPT-2 and Llama sequence classifiers and causal LMs, shipped without a pad token."""

import json
import re
import shutil

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tasks import audit, modelpool
from tasks.cli import main
from tasks.merge import TensorGroup, get_method
from tasks.merge.statistics import input_grams, input_major_weights
from tests import tiny
from tests.test_task_types import _config, _run  # a population's run config, and a run that must succeed

ARCHITECTURE = {"gpt2": "GPT2ForSequenceClassification", "llama": "LlamaForSequenceClassification"}


@pytest.mark.parametrize("family", tiny.DECODER_FAMILIES)
def test_a_decoder_scores_each_example_at_its_last_real_token_in_any_batch(tiny_decoders, family):
    """The members name no pad token; batches are padded on the right with the end-of-sequence token, and the
    model's sequence head looks past exactly those pads, so an example's logits do not depend on its batch."""
    member = tiny_decoders(family)["members"][0]
    assert json.loads((member / "config.json").read_text())["pad_token_id"] is None
    assert AutoTokenizer.from_pretrained(member).pad_token is None
    tokenizer, model = modelpool.load_tokenizer(member), modelpool.load_model(member).eval()
    assert tokenizer.pad_token == "<eos>" and tokenizer.padding_side == "right"
    assert model.config.pad_token_id == tokenizer.pad_token_id == tokenizer.eos_token_id
    texts = [text for text, _ in tiny.sentences("books", 8, seed=5)]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 1  # examples of several lengths: real padding
    with torch.no_grad():
        together = model(**batch).logits
        alone = torch.cat([model(**tokenizer([text], return_tensors="pt")).logits for text in texts])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)
    assert together.std(0).max() > 1e-3  # the head's output varies with the example


@pytest.mark.parametrize(("family", "merger"), [("gpt2", "regmean"), ("gpt2", "ties"), ("llama", "fisher"), ("llama", "dare")])
def test_decoder_populations_fuse_shard_invariant_and_reproduce_their_scores(tiny_decoders, tmp_path, family, merger):
    population = tiny_decoders(family)
    config = _config(population, tmp_path, merger=merger, base_model=str(population["base"]))
    one = _run(config, tmp_path / "one", "--set", "shards=1")
    three = _run(config, tmp_path / "three", "--set", "shards=3", "--set", f"store={tmp_path / 'store3'}", "--set", "registered_model=null")
    assert one["generations"] == three["generations"] and one["fused_model_sha256"] == three["fused_model_sha256"]
    best = [g["best_fitness"] for g in one["generations"]]
    assert best == sorted(best) and 0 < best[-1] < 1

    # The fused model loads with its Auto class, batches as it was scored, and reproduces its logged dev score.
    folder = one["fused_model_uri"].removeprefix("file://")
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert type(model).__name__ == ARCHITECTURE[family]
    assert model.config.pad_token_id == AutoTokenizer.from_pretrained(folder).pad_token_id == 1
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    check = audit.verify(audit.collect(one["mlflow_run_id"], uri), uri)
    assert check["match"] and check["recomputed"] == one["final"]["dev"]["macro_f1"]


def test_regmean_solves_gpt2_conv1d_weights_as_the_transposed_linear_ones(tiny_decoders):
    """GPT-2 stores its linear layers' weights in x out (Conv1D). Their inputs' Gram matrices are recorded, and
    RegMean solves them as it solves the nn.Linear weight that is their transpose."""
    member = tiny_decoders("gpt2")["members"][0]
    model = modelpool.load_model(member).float()
    conv1d = input_major_weights(model)
    assert len(conv1d) == 8 and "transformer.h.0.attn.c_proj.weight" in conv1d  # 4 per block; c_proj is square
    tokenizer = modelpool.load_tokenizer(member)
    enc = tokenizer([t for t, _ in tiny.sentences("books", 16, seed=4)], padding=True, return_tensors="pt")
    data = {**enc, "lengths": enc["attention_mask"].sum(1), "labels": torch.zeros(16, dtype=torch.long)}
    names = [n for n, _ in model.named_parameters()]
    grams = input_grams(model, data, names, batches=2, batch_size=8, seed=0)
    params = dict(model.named_parameters())
    assert set(conv1d) <= set(grams)
    assert all(grams[n].shape == (params[n].shape[0],) * 2 for n in conv1d)  # in x in: rows of the stored weight

    merge, settings = get_method("regmean").load(), get_method("regmean").params()
    generator = torch.Generator().manual_seed(0)
    linear = [torch.randn(48, 32, generator=generator) for _ in range(3)]  # out x in
    stats = [grams["transformer.h.0.mlp.c_fc.weight"] * (1 + k) + torch.eye(32) * k for k in range(3)]
    expected = merge(TensorGroup("w", linear, stats=stats), settings)
    stored = merge(TensorGroup("w", [w.T.contiguous() for w in linear], stats=stats, input_major=True), settings)
    torch.testing.assert_close(stored, expected.T, rtol=0, atol=1e-6)
    assert not torch.allclose(expected, sum(linear) / 3, atol=1e-3)  # a real solve, not the average


def test_a_decoder_that_names_no_pad_or_end_token_is_refused_before_compute(tiny_decoders, tmp_path, capsys):
    population = tiny_decoders("gpt2")
    bare = tmp_path / "bare"
    shutil.copytree(population["members"][1], bare)
    config = json.loads((bare / "config.json").read_text())
    (bare / "config.json").write_text(json.dumps({**config, "eos_token_id": None, "bos_token_id": None}))
    settings = json.loads((bare / "tokenizer_config.json").read_text())
    settings.pop("eos_token", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(settings))
    assert AutoTokenizer.from_pretrained(bare).eos_token is None
    path = _config({**population, "members": [bare, population["members"][0]]}, tmp_path)
    assert main(["run", str(path), "--output", str(tmp_path / "out")]) == 2
    message = capsys.readouterr().err
    assert str(bare) in message and "set pad_token_id in config.json" in message
    stored = [p.relative_to(tmp_path / "store").as_posix() for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert not any(part.startswith(("gen=", "stats/", "final/", "data/")) for key in stored for part in key.split("/"))


@pytest.mark.parametrize(("family", "merger"), [("gpt2", "average"), ("llama", "fisher")])
def test_language_model_fitness_is_the_token_weighted_loss_for_any_shard_count(tiny_decoders, tmp_path, family, merger):
    """Causal LMs fused on their dev text: fitness is -perplexity of the token-weighted mean NLL, identical for 1
    and 3 shards; GPT-2's output layer stays tied to its embeddings in the fused model, Llama's stays its own."""
    import csv
    import math

    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    population = tiny_decoders(family, "lm")
    config = _config(population, tmp_path, data={"task_type": "language_modeling"}, merger=merger)
    one = _run(config, tmp_path / "one", "--set", "shards=1")
    three = _run(config, tmp_path / "three", "--set", "shards=3", "--set", f"store={tmp_path / 'store3'}", "--set", "registered_model=null")
    assert one["generations"] == three["generations"] and one["fused_model_sha256"] == three["fused_model_sha256"]
    assert one["config"]["metric"] == "neg_perplexity" and one["final"]["dev"]["neg_perplexity"] == one["generations"][-1]["best_fitness"]

    # The same number from transformers' own loss, one text at a time: its mean over the text's predicted tokens.
    folder = one["fused_model_uri"].removeprefix("file://")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    nll, tokens = [], 0
    for source in population["dev"]:
        with open(source, newline="") as f:
            for row in csv.DictReader(f):
                enc = tokenizer(row["text"], return_tensors="pt")
                with torch.no_grad():
                    loss = model(**enc, labels=enc["input_ids"]).loss.item()
                nll.append(loss * (enc["input_ids"].shape[1] - 1))
                tokens += enc["input_ids"].shape[1] - 1
    dev = one["final"]["dev"]
    assert dev["tokens"] == tokens and dev["n"] == 80
    assert dev["loss"] == pytest.approx(math.fsum(nll) / tokens, rel=1e-5) and dev["neg_perplexity"] == -math.exp(dev["loss"])

    with safe_open(f"{folder}/model.safetensors", "pt") as f:
        stored = set(f.keys())
    if family == "gpt2":
        assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr() and "lm_head.weight" not in stored
    else:
        assert "lm_head.weight" in stored and not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    check = audit.verify(audit.collect(one["mlflow_run_id"], uri), uri)
    assert check["match"] and check["recomputed"] == dev["neg_perplexity"]


def test_language_modeling_needs_a_causal_lm_and_its_own_metrics(tiny_decoders, tmp_path, capsys):
    population = tiny_decoders("gpt2")  # sequence classifiers
    config = _config(population, tmp_path, data={"task_type": "language_modeling"})
    assert main(["run", str(config), "--output", str(tmp_path / "out")]) == 2
    assert "language modeling needs a causal LM" in capsys.readouterr().err
    assert main(["run", str(config), "--output", str(tmp_path / "out"), "--set", "metric=macro_f1"]) == 2
    assert "macro_f1" in capsys.readouterr().err
    assert not list((tmp_path / "store").glob("*/gen=*"))


def test_bf16_members_in_sharded_safetensors_fuse_in_their_dtype(tiny_decoders, tmp_path):
    """Checkpoints as LLMs ship them: bfloat16, in several safetensors files with `model.safetensors.index.json`.
    Offspring and merges are computed in float32 per tensor and stored, like the fused model, in bfloat16."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    population = tiny_decoders("llama", "lm")
    members = []
    for folder in population["members"]:
        sharded = tmp_path / folder.name
        AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).save_pretrained(sharded, max_shard_size="40KB")
        for file in folder.glob("tokenizer*"):
            shutil.copy(file, sharded)
        assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("model-*.safetensors"))) > 1
        members.append(sharded)
    config = _config({**population, "members": members}, tmp_path, data={"task_type": "language_modeling"}, merger="ties", base_model=str(population["base"]))
    summary = _run(config, tmp_path / "out", "--set", "generations=1")

    def dtypes(path) -> set[str]:
        with safe_open(path, "pt") as f:
            return {str(f.get_slice(k).get_dtype()) for k in f.keys()}

    store = next((tmp_path / "store").iterdir())
    offspring = list(store.glob("gen=1/ind=*/offspring.safetensors"))
    assert len(offspring) == 2 and all(dtypes(p) == {"BF16"} for p in offspring)
    assert dtypes(summary["fused_model_uri"].removeprefix("file://") + "/model.safetensors") == {"BF16"}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    check = audit.verify(audit.collect(summary["mlflow_run_id"], uri), uri)
    assert check["match"] and check["recomputed"] == summary["final"]["dev"]["neg_perplexity"]


def _rank_config(population, tmp_path, **overrides):
    data = {"dev": [str(p) for p in population["labelled_dev"]], "heldout": {k: str(v) for k, v in population["labelled_test"].items()}}
    rank = {"task_type": "rank_classification", "prompt": tiny.PROMPT, "verbalizers": tiny.VERBALIZERS}
    return _config(population, tmp_path, data={**data, **rank, **overrides.pop("data", {})}, **overrides)


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_rank_classification_sums_every_verbalizer_token_after_the_prompt(tiny_decoders, family):
    """Each label's score is its whole verbalizer's log-probability after the prompt ("very positive" is two
    tokens), as the model gives it for prompt and verbalizer alone: a causal LM's continuation, T5's target."""
    from tasks import taskpool

    member = tiny_decoders(family, "lm")["members"][0]
    tokenizer, model = modelpool.load_tokenizer(member), modelpool.load_model(member, "rank_classification").eval()
    rows = tiny.sentences("books", 12, seed=4)
    source = tiny.write_csv(member.parent.parent / "rank_check.csv", rows)
    labels = list(tiny.VERBALIZERS)
    data = taskpool.encode(
        str(source), tokenizer=tokenizer, text_column="text", label_column="label", label2id={name: i for i, name in enumerate(labels)},
        num_labels=3, max_length=64, task_type="rank_classification", prompt=tiny.PROMPT, verbalizers=list(tiny.VERBALIZERS.values()),
        seq2seq=family == "t5",
    )  # fmt: skip
    kind = taskpool.task("rank_classification")
    with torch.no_grad():
        width = int(data["lengths"].max())
        scores = kind.forward(model, {name: data[name][..., :width].long() for name in kind.inputs})
        expected = torch.zeros(len(rows), len(labels))
        for i, (text, _) in enumerate(rows):
            prompt = tiny.PROMPT.format(text=text)
            for k, verbalizer in enumerate(tiny.VERBALIZERS.values()):
                if family == "t5":
                    target = tokenizer(verbalizer, return_tensors="pt")["input_ids"]  # ends with </s>
                    loss = model(**tokenizer(prompt, return_tensors="pt"), labels=target).loss
                    expected[i, k] = -loss * target.shape[1]
                else:
                    n = len(tokenizer(verbalizer)["input_ids"])
                    ids = tokenizer(f"{prompt} {verbalizer}", return_tensors="pt")["input_ids"]
                    log_probs = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
                    expected[i, k] = log_probs[-n:].gather(-1, ids[0, -n:, None]).sum()
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-4)
    assert len(tokenizer(tiny.VERBALIZERS["positive"], add_special_tokens=False)["input_ids"]) == 2
    assert len(set(scores.argmax(1).tolist())) > 1  # the members learned the verbalizers: not one label for all


@pytest.mark.parametrize("family", ["gpt2", "llama", "t5"])
def test_generative_members_fuse_by_rank_classification_shard_invariant(tiny_decoders, tmp_path, family):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    population = tiny_decoders(family, "lm")
    config = _rank_config(population, tmp_path, merger="ties", base_model=str(population["base"]))
    one = _run(config, tmp_path / "one", "--set", "shards=1")
    three = _run(config, tmp_path / "three", "--set", "shards=3", "--set", f"store={tmp_path / 'store3'}", "--set", "registered_model=null")
    assert one["generations"] == three["generations"] and one["fused_model_sha256"] == three["fused_model_sha256"]
    assert 0 < one["final"]["dev"]["macro_f1"] < 1 and one["final"]["dev"]["n"] == 80
    folder = one["fused_model_uri"].removeprefix("file://")
    auto = AutoModelForSeq2SeqLM if family == "t5" else AutoModelForCausalLM
    assert type(auto.from_pretrained(folder)).__name__ == {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "t5": "T5ForConditionalGeneration"}[family]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    check = audit.verify(audit.collect(one["mlflow_run_id"], uri), uri)
    assert check["match"] and check["recomputed"] == one["final"]["dev"]["macro_f1"]


def test_bad_generative_configs_fail_before_compute(tiny_decoders, tmp_path, capsys):
    from tasks.config import ConfigError, EvolverConfig

    gpt2, t5 = tiny_decoders("gpt2", "lm"), tiny_decoders("t5", "lm")
    cases = {
        "no verbalizers": ({"verbalizers": None}, "needs verbalizers"),
        "a prompt without {text}": ({"prompt": "so it was"}, "prompt must name ['text']"),
        "a prompt with another field": ({"prompt": "{text} {topic}"}, "it names ['text', 'topic']"),
        "verbalizers for another task type": ({"task_type": "sequence_classification"}, "only task_type rank_classification"),
        "two labels with one verbalizer": ({"verbalizers": {"negative": "bad", "neutral": "bad", "positive": "good"}}, "distinct"),
    }
    for name, (data, words) in cases.items():
        with pytest.raises(ConfigError, match=re.escape(words)):
            EvolverConfig.from_yaml(_rank_config(gpt2, tmp_path / name, data=data))

    # A data label with no verbalizer, and members of two families: refused before anything is computed.
    odd = tiny.write_csv(tmp_path / "odd.csv", [("the novel was gripping", "positive"), ("yeah right", "sarcastic")])
    broken = {
        "label": (_rank_config(gpt2, tmp_path / "label", data={"dev": str(odd)}), "['sarcastic']"),
        "families": (_rank_config({**gpt2, "members": [gpt2["members"][0], t5["members"][0]]}, tmp_path / "families"), "incompatibilit"),
    }
    for name, (config, words) in broken.items():
        assert main(["run", str(config), "--output", str(tmp_path / name / "out")]) == 2, name
        assert words in capsys.readouterr().err, name
        assert not list((tmp_path / name / "store").glob("*/gen=*")), name


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_a_long_rank_prompt_loses_words_of_its_text_not_the_templates_cue(family):
    """Cutting the rendered prompt from the right would drop `so it was`, the cue the verbalizer continues; the
    text gives up its last words instead, as many as needed and no more. A prompt that fits is left alone."""
    from tasks.taskpool.rank import fitted_prompts

    tokenizer = tiny.t5_tokenizer() if family == "t5" else tiny.word_tokenizer()
    closing = ["so", "it", "was", *(["</s>"] if family == "t5" else [])]
    words = [w for w in tiny.vocabulary()[5:] if w not in closing] * 2
    long, short = " ".join(words), " ".join(words[:3])
    room = 12
    fitted, untouched = fitted_prompts(tokenizer, [long, short], None, prompt=tiny.PROMPT, room=room)
    tokens = tokenizer.convert_ids_to_tokens(fitted)
    assert len(tokens) == room and tokens[-len(closing) :] == closing
    assert tokens[: room - len(closing)] == words[: room - len(closing)]  # the text's first words, in order
    assert untouched == tokenizer(tiny.PROMPT.format(text=short))["input_ids"]


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_finetune_teaches_a_generative_base_to_rank_its_verbalizers(tiny_decoders, tmp_path, family):
    """tasks.finetune on an untrained causal LM (no pad token) or T5, task_type rank_classification: the loss
    is the gold verbalizer after the prompt, so the member ranks the labels of unseen sentences well above
    chance, where the base does not; a label without a verbalizer is refused before any training."""
    from tasks import taskpool
    from tasks.finetune import finetune

    base = tiny_decoders(family, "lm")["base"]
    train = tiny.write_csv(tmp_path / "train.csv", tiny.sentences("books", 160, seed=1))
    unseen = tiny.write_csv(tmp_path / "unseen.csv", tiny.sentences("books", 60, seed=7))
    kind = taskpool.task("rank_classification")

    def accuracy(folder):
        tokenizer, model = modelpool.load_tokenizer(folder), modelpool.load_model(folder, "rank_classification").eval()
        data = taskpool.encode(
            str(unseen), tokenizer=tokenizer, text_column="text", label_column="label", label2id={name: i for i, name in enumerate(tiny.LABELS)},
            num_labels=3, max_length=64, task_type="rank_classification", prompt=tiny.PROMPT, verbalizers=list(tiny.VERBALIZERS.values()),
            seq2seq=family == "t5",
        )  # fmt: skip
        with torch.no_grad():
            scores = kind.forward(model, {name: data[name].long() for name in kind.inputs})
        return (scores.argmax(1) == data["labels"]).float().mean().item()

    recipe = {"base_model": base, "labels": tiny.LABELS, "task_type": "rank_classification", "prompt": tiny.PROMPT, "log": lambda line: None}
    with pytest.raises(ValueError, match=re.escape("no verbalizer for label(s) ['positive']")):
        finetune(train, tmp_path / "refused", verbalizers={"negative": "negative", "neutral": "neutral"}, **recipe)
    assert not (tmp_path / "refused").exists()
    member = finetune(train, tmp_path / "member", verbalizers=tiny.VERBALIZERS, epochs=20, lr=5e-3, batch_size=16, seed=0, **recipe)
    assert type(modelpool.load_model(member, "rank_classification")).__name__ == {"gpt2": "GPT2LMHeadModel", "t5": "T5ForConditionalGeneration"}[family]
    before, after = accuracy(base), accuracy(member)
    assert after >= 0.8 and after > before + 0.3, (before, after)


def test_t5_gram_matrices_count_each_stack_at_its_own_real_positions(tiny_decoders):
    """RegMean's statistics on T5: encoder layers and cross-attention's keys and values read encoder states, real
    where the prompt is; the decoder's other layers (and an untied output layer) read decoder states, real where
    the verbalizer is. Padding of either kind never enters a Gram matrix."""
    from tasks import taskpool

    member = tiny_decoders("t5", "lm")["members"][0]
    tokenizer, model = modelpool.load_tokenizer(member), modelpool.load_model(member, "rank_classification").float().eval()
    source = tiny.write_csv(member.parent.parent / "gram_check.csv", tiny.sentences("books", 16, seed=5))
    data = taskpool.encode(
        str(source), tokenizer=tokenizer, text_column="text", label_column="label", label2id={name: i for i, name in enumerate(tiny.LABELS)},
        num_labels=3, max_length=64, task_type="rank_classification", prompt=tiny.PROMPT, verbalizers=list(tiny.VERBALIZERS.values()), seq2seq=True,
    )  # fmt: skip
    kind = taskpool.task("rank_classification")
    stacks = {
        "encoder.block.0.layer.0.SelfAttention.q.weight": "encoder",
        "decoder.block.1.layer.0.SelfAttention.k.weight": "decoder",
        "decoder.block.0.layer.1.EncDecAttention.q.weight": "decoder",
        "decoder.block.0.layer.1.EncDecAttention.k.weight": "encoder",
        "decoder.block.1.layer.2.DenseReluDense.wo.weight": "decoder",
        "lm_head.weight": "decoder",
    }
    grams = input_grams(model, data, list(stacks), batches=2, batch_size=8, seed=0, kind=kind)
    assert set(grams) == set(stacks)

    seen = {}
    modules = dict(model.named_modules())
    handles = [modules[n.removesuffix(".weight")].register_forward_hook(lambda m, i, o, n=n: seen.update({n: i[0]})) for n in stacks]
    with torch.no_grad():
        kind.forward(model, {name: data[name].long() for name in kind.inputs})
    for handle in handles:
        handle.remove()
    real = {
        "encoder": data["attention_mask"].reshape(-1, data["attention_mask"].shape[-1]).bool(),
        "decoder": (data["choice_targets"] != -100).reshape(-1, data["choice_targets"].shape[-1]),
    }
    assert real["encoder"].sum() != real["decoder"].sum()  # prompts and verbalizers differ in length: the test can tell them apart
    for name, stack in stacks.items():
        x = seen[name][real[stack]].double()
        torch.testing.assert_close(grams[name], (x.T @ x / len(x)).float(), rtol=1e-5, atol=1e-6, msg=name)
