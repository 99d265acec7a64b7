"""Rank classification: a generative model (a causal LM, or T5) scored as a classifier, without sampling.

Each example is rendered through the config's `prompt`; each label has a verbalizer. The predicted label is the
one whose verbalizer is most likely after the prompt: the sum of its tokens' log-probabilities, every token
scored (a verbalizer of several tokens is not cut to its first). A causal LM reads prompt + verbalizer as one
sequence and the verbalizer's tokens are its continuation; T5 reads the prompt in its encoder and the verbalizer
is its decoder target. This is how the paper scores its generative GPT-2 and its T5 on classification.

An example is stored as one sequence per label (rows x labels x tokens, padded on the right), with
`choice_targets` holding the verbalizer's token ids where they are scored and -100 elsewhere. The scorer sees
the rows x labels matrix of summed log-probabilities as logits, so statistics are confusion counts, and every
classification metric, the shard invariance and the Fisher loss carry over from sequence classification.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tasks.taskpool.classification import Classification
from tasks.taskpool.data import DataError

IGNORE = -100  # choice_targets where nothing is scored


class RankClassification(Classification):
    name = "rank_classification"
    inputs = ("input_ids", "attention_mask", "choice_targets")

    def forward(self, model, inputs):
        """rows x labels: each label's verbalizer, its tokens' log-probabilities summed (float32)."""
        ids, mask, targets = inputs["input_ids"], inputs["attention_mask"], inputs["choice_targets"]
        rows, labels, width = ids.shape
        ids, mask, targets = (t.reshape(rows * labels, width).contiguous() for t in (ids, mask, targets))
        if model.config.is_encoder_decoder:  # the decoder reads the targets shifted right, -100 as padding
            logits, scored = model(input_ids=ids, attention_mask=mask, labels=targets).logits, targets
        else:  # token t+1 is predicted at t
            logits, scored = model(input_ids=ids, attention_mask=mask).logits[:, :-1], targets[:, 1:]
        log_probs = logits.float().log_softmax(-1)
        keep = scored != IGNORE
        token = log_probs.gather(-1, scored.clamp(min=0).unsqueeze(-1)).squeeze(-1).masked_fill(~keep, 0.0)
        return token.sum(-1).view(rows, labels)

    def check_head(self, num_labels, architectures, where):
        generative = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
        if architectures and not any(a.endswith(generative) for a in architectures):
            raise DataError(
                f"{where}: rank classification scores a generative model (…ForCausalLM, …ForConditionalGeneration); this checkpoint is a {', '.join(architectures)}"
            )


def fitted_prompts(tokenizer, texts: Sequence[str], pairs: Sequence[str] | None, *, prompt: str, room: int) -> list[list[int]]:
    """Each row's prompt as token ids, at most `room` of them. A prompt that is too long loses words from the end
    of its text (and pair, in proportion), never the template's own words: a prompt such as `{text} It was` keeps
    the cue the verbalizer continues, where cutting the rendered prompt from the right would drop it. A template
    too long to fit even with empty fields is cut from the right."""
    pairs = pairs if pairs is not None else [""] * len(texts)
    ids = tokenizer([prompt.format(text=t, text_pair=p) for t, p in zip(texts, pairs)])["input_ids"]
    for i, row in enumerate(ids):
        if len(row) <= room:
            continue
        words = (texts[i].split(), pairs[i].split())

        def render(fraction: float, words=words) -> list[int]:
            kept = [" ".join(w[: int(len(w) * fraction)]) for w in words]
            return tokenizer(prompt.format(text=kept[0], text_pair=kept[1]))["input_ids"]

        # Binary search on the fraction of each field's words kept: 12 halvings resolve 1 word in 4,096.
        low, high = 0.0, 1.0
        for _ in range(12):
            middle = (low + high) / 2
            low, high = (middle, high) if len(render(middle)) <= room else (low, middle)
        fitted = render(low)
        ids[i] = fitted if len(fitted) <= room else tokenizer(prompt.format(text=texts[i], text_pair=pairs[i]), truncation=True, max_length=room)["input_ids"]
    return ids


def encode_choices(
    tokenizer, texts: Sequence[str], pairs: Sequence[str] | None, *, prompt: str, verbalizers: Sequence[str], max_length: int, seq2seq: bool
) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and choice_targets (rows x labels x tokens) and lengths (per row, its longest
    sequence). A causal LM's prompt is shortened so that prompt + the longest verbalizer fit `max_length`; T5's
    prompt and verbalizer each fit it (`fitted_prompts`: the text loses words, the template keeps its own)."""
    # T5's targets end with its end-of-sequence token, as it was trained to write them; a continuation has no BOS.
    choices = [tokenizer(v, add_special_tokens=seq2seq)["input_ids"] for v in verbalizers]
    if any(not c for c in choices):
        raise DataError(f"a verbalizer of {list(verbalizers)} tokenises to nothing")
    room = max_length if seq2seq else max_length - max(len(c) for c in choices)
    if room < 1:
        raise DataError(f"max_length {max_length} leaves no room for the prompt beside the longest verbalizer ({max(len(c) for c in choices)} tokens)")
    prompts = fitted_prompts(tokenizer, texts, pairs, prompt=prompt, room=room)
    choices = [c[:max_length] for c in choices]
    sizes = [[max(len(p), len(c)) if seq2seq else len(p) + len(c) for c in choices] for p in prompts]
    width = max(max(row) for row in sizes)
    shape = (len(prompts), len(choices), width)
    input_ids = torch.full(shape, tokenizer.pad_token_id, dtype=torch.int32)
    attention_mask = torch.zeros(shape, dtype=torch.int8)
    targets = torch.full(shape, IGNORE, dtype=torch.int32)
    for i, p in enumerate(prompts):
        for k, c in enumerate(choices):
            sequence = p if seq2seq else p + c
            input_ids[i, k, : len(sequence)] = torch.tensor(sequence, dtype=torch.int32)
            attention_mask[i, k, : len(sequence)] = 1
            start = 0 if seq2seq else len(p)
            targets[i, k, start : start + len(c)] = torch.tensor(c, dtype=torch.int32)
    lengths = torch.tensor([max(row) for row in sizes], dtype=torch.int32)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "choice_targets": targets, "lengths": lengths}


def prompting(spec, folder) -> dict:
    """`taskpool.encode`'s settings for a task config: for rank classification its prompt, its verbalizers,
    and whether the checkpoint in `folder` is an encoder-decoder (T5); nothing for other task types."""
    if spec.task_type != RankClassification.name:
        return {}
    from tasks.modelpool import is_encoder_decoder

    return {"prompt": spec.prompt_template, "verbalizers": spec.verbalizer_texts, "seq2seq": is_encoder_decoder(folder)}
