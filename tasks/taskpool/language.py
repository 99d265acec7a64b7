"""Language modeling: fitness from a causal LM's loss on dev text, for domain-adapted LMs that no label set fits.

A row is a text and nothing else. The model predicts every token from the ones before it; padding (and the
first token, which nothing predicts) is not scored. The loss is the token-weighted mean NLL over all dev text:
one long document and ten short ones weigh by their tokens, as perplexity is defined.

A shard returns, per group and in row order, each example's summed NLL (a float64, exact in JSON) and its token
count. `math.fsum` of the per-example sums is correctly rounded, so it does not depend on how the rows were cut:
the loss is bit-identical for any shard count (a sum of per-shard float sums would not be). Metrics maximise:
`neg_perplexity` (-exp(loss)) and `neg_loss`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tasks.taskpool.base import Scorer, Task
from tasks.taskpool.data import DataError

IGNORE = -100  # the target of padding positions


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token, the NLL of the next token (float32), and whether it is scored: token t+1 by the logits at t."""
    log_probs = logits[:, :-1].float().log_softmax(-1)
    targets = labels[:, 1:].long()
    scored = targets != IGNORE
    nll = -log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return nll.masked_fill(~scored, 0.0), scored


class _LossScorer(Scorer):
    def __init__(self, n_groups: int):
        self.n_groups = n_groups
        self.parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def update(self, logits, labels, groups):
        nll, scored = token_nll(logits, labels)
        self.parts.append((nll.double().sum(1), scored.sum(1), groups))

    def result(self):
        if not self.parts:
            return [{"nll": [], "tokens": []} for _ in range(self.n_groups)]
        nll, tokens, groups = (torch.cat(t).cpu() for t in zip(*self.parts))
        return [{"nll": nll[groups == g].tolist(), "tokens": tokens[groups == g].tolist()} for g in range(self.n_groups)]


class LanguageModeling(Task):
    name = "language_modeling"

    def encode_labels(self, raw: Sequence, *, label2id, num_labels, source):
        raise NotImplementedError("language modeling reads no labels: the targets are the text's own tokens (`targets`)")

    @staticmethod
    def targets(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The text's own tokens, IGNORE on padding."""
        return input_ids.to(torch.int32).masked_fill(attention_mask == 0, IGNORE)

    def scorer(self, *, n_groups, num_labels, device):
        return _LossScorer(n_groups)

    def add(self, parts):
        return {key: [v for part in parts for v in part[key]] for key in ("nll", "tokens")}

    def size(self, stats):
        return len(stats["tokens"])

    def metrics(self, stats):
        tokens = sum(stats["tokens"])
        if tokens == 0:
            raise DataError("no tokens were scored: every text is one token long or empty")
        loss = math.fsum(stats["nll"]) / tokens
        # perplexity and loss as people read them, besides the maximised forms fitness takes
        return {"neg_perplexity": -math.exp(loss), "neg_loss": -loss, "perplexity": math.exp(loss), "loss": loss, "tokens": tokens, "n": len(stats["tokens"])}

    def fisher_loss(self, logits, inputs):
        # The "hard" Fisher: the model's own most likely next token is the target, on real tokens only.
        predicted = logits[:, :-1].argmax(-1)
        targets = torch.cat([inputs["input_ids"][:, :1], predicted], 1).masked_fill(inputs["attention_mask"] == 0, IGNORE)
        nll, scored = token_nll(logits, targets)
        return nll.sum() / scored.sum().clamp(min=1)

    def check_head(self, num_labels, architectures, where):
        if architectures and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
            raise DataError(f"{where}: language modeling needs a causal LM (…ForCausalLM, …LMHeadModel); this checkpoint is a {', '.join(architectures)}")
