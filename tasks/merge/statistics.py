"""Per-member statistics for the statistic-weighted merges, computed once per member model on dev data.

- Fisher diagonal ("hard" variant of the reference): per batch, the mean NLL of the model's own argmax
  prediction is back-propagated and grad**2 * rows accumulated; divided by the total rows. No labels needed.
  The loss is the task type's (`Task.fisher_loss`): per token for token classification, the prediction itself
  for regression (a Gaussian's Fisher information is the outer product of the output's gradient).
- Gram matrices for RegMean: X^T X / rows of the inputs of every linear layer whose weight is covered
  (nn.Linear, and GPT-2's Conv1D, whose weight is stored transposed: `input_major_weights`), over real tokens
  only (padding positions would otherwise pull the solution towards the pad embedding).

Both use the first `batches` batches of a seeded permutation of the rows, each trimmed to its longest
example as `taskpool.confusion` does, and leave the model as they found it: no hooks, no grads, the same
requires_grad flags. Results are float32 on the CPU, keyed by parameter name.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from tasks.taskpool import MODEL_INPUTS, Task, task
from tasks.taskpool.rank import IGNORE


def _batches(
    data: dict[str, torch.Tensor], *, batches: int, batch_size: int, seed: int, device: torch.device, names: Sequence[str] = MODEL_INPUTS
) -> Iterator[dict[str, torch.Tensor]]:
    """The inputs a task type's forward pass reads (`names`: input_ids, attention_mask and, for sentence pairs,
    token_type_ids) of the first `batches` batches of a seeded permutation, each cut to its longest row."""
    order = torch.randperm(len(data["labels"]), generator=torch.Generator(device="cpu").manual_seed(seed))
    for start in range(0, min(batches * batch_size, len(order)), batch_size):
        rows = order[start : start + batch_size]
        width = int(data["lengths"][rows].max())
        yield {name: data[name][rows, ..., :width].long().to(device) for name in names if name in data}


def fisher_diagonals(
    model, data: dict[str, torch.Tensor], names: list[str], *, batches: int, batch_size: int, seed: int, kind: Task | None = None
) -> dict[str, torch.Tensor]:
    """`kind`: the task type, whose forward pass and Fisher loss are used; None: sequence classification."""
    kind = kind or task("sequence_classification")
    params = dict(model.named_parameters())
    flags = {name: p.requires_grad for name, p in params.items()}
    covered = {name: params[name] for name in names if name in params}
    device = next(model.parameters()).device
    sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in covered.items()}
    total = 0
    try:
        for name, p in params.items():  # gradients only where they are needed
            p.requires_grad_(name in covered)
            p.grad = None
        with torch.enable_grad():
            for inputs in _batches(data, batches=batches, batch_size=batch_size, seed=seed, device=device, names=kind.inputs):
                kind.fisher_loss(kind.forward(model, inputs), inputs).backward()
                rows = len(inputs["input_ids"])
                for name, p in covered.items():
                    if p.grad is not None:  # a parameter the forward pass did not use (e.g. an unused pooler)
                        sums[name] += p.grad.float() ** 2 * rows
                        p.grad = None
                total += rows
    finally:
        for name, p in params.items():
            p.grad = None
            p.requires_grad_(flags[name])
    return {name: s.div_(max(total, 1)).cpu() for name, s in sums.items()}


def _is_conv1d(module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def input_major_weights(model) -> list[str]:
    """The weights of linear layers stored in_features x out_features (GPT-2's Conv1D), which RegMean solves
    without the transpose an nn.Linear weight needs."""
    return sorted(f"{name}.weight" for name, module in model.named_modules() if _is_conv1d(module))


@torch.no_grad()
def input_grams(
    model, data: dict[str, torch.Tensor], names: list[str], *, batches: int, batch_size: int, seed: int, kind: Task | None = None
) -> dict[str, torch.Tensor]:
    """`kind`: the task type, whose forward pass feeds the layers; None: sequence classification."""
    kind = kind or task("sequence_classification")
    wanted = set(names)
    linears = {f"{name}.weight": module for name, module in model.named_modules() if isinstance(module, torch.nn.Linear) or _is_conv1d(module)}
    layers = {name: module for name, module in linears.items() if name in wanted}
    grams: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = dict.fromkeys(layers, 0)
    # The current batch's masks of real positions, read by the hooks. An encoder-decoder (T5) has two: the
    # encoder's attention mask, and the decoder's targets (its real positions are those with a target). A
    # decoder layer reads decoder states, except cross-attention's keys and values, which read the encoder's
    # output: that tensor itself, recognised by identity.
    masks: dict[str, torch.Tensor | None] = {"encoder": None, "decoder": None}
    encoder_output: list = [None]
    in_decoder: set[int] = set()
    hooks_on = []
    if getattr(model.config, "is_encoder_decoder", False):
        # An untied output layer reads the decoder's states too.
        in_decoder = {id(m) for m in [*model.get_decoder().modules(), model.get_output_embeddings()]}
        hooks_on.append(model.get_encoder().register_forward_hook(lambda module, inputs, output: encoder_output.__setitem__(0, output[0])))

    # The last input's X^T X, since query, key and value read the same input one after the other. The input is
    # kept with it, so that its id cannot be reused by another tensor. One product at a time, not a batch's worth:
    # the Gram matrices of a large model are gigabytes already.
    last: list = [None, None, 0]

    def hook(name: str):
        def record(module, inputs, output):
            x = inputs[0]
            if last[0] is not x:
                decoder_states = id(module) in in_decoder and x is not encoder_output[0]
                mask = masks["decoder" if decoder_states else "encoder"]
                real = mask is not None and x.dim() == 3 and x.shape[:2] == mask.shape
                flat = x[mask.bool()] if real else x  # real tokens only
                flat = flat.reshape(-1, flat.shape[-1]).float()
                # One float32 product per batch (fast), summed over batches in float64 (exact enough to solve).
                last[:] = [x, (flat.T @ flat).double(), len(flat)]
            _, product, count = last
            if name in grams:
                grams[name] += product
            else:
                grams[name] = product.clone()
            rows[name] += count

        return record

    device = next(model.parameters()).device
    handles = hooks_on + [module.register_forward_hook(hook(name)) for name, module in layers.items()]
    try:
        for inputs in _batches(data, batches=batches, batch_size=batch_size, seed=seed, device=device, names=kind.inputs):
            # Rank classification reads every label's sequence of a row: rows x labels x tokens, flattened by forward.
            masks["encoder"] = inputs["attention_mask"].reshape(-1, inputs["attention_mask"].shape[-1])
            if in_decoder and "choice_targets" in inputs:
                targets = inputs["choice_targets"]
                masks["decoder"] = (targets != IGNORE).reshape(-1, targets.shape[-1])
            encoder_output[0] = None
            kind.forward(model, inputs)
            last[:] = [None, None, 0]
    finally:
        for handle in handles:
            handle.remove()
    # float32 one matrix at a time, each float64 sum dropped as soon as it is converted.
    return {name: (grams.pop(name) / rows[name]).float().cpu() for name in list(grams)}
