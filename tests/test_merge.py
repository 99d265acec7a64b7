"""Merging methods against their formulas, and the statistics they are fed, on real tensors and the tiny BERT."""

import subprocess
import sys

import pydantic
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from tasks import modelpool, taskpool
from tasks.merge import MERGER_NAMES, METHODS, MergeParams, TensorGroup, get_method
from tasks.merge.statistics import fisher_diagonals, input_grams
from tests import tiny


def merge(method: str, group: TensorGroup, **params) -> torch.Tensor:
    entry = get_method(method)
    return entry.load()(group, entry.params(**params))


def population(n: int = 3, shape=(6, 5), seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + torch.randn(shape, generator=g) for _ in range(n)]


# -- registry and parameters ------------------------------------------------------------------------------


def test_merge_params_has_one_field_per_registered_method():
    assert tuple(MergeParams.model_fields) == MERGER_NAMES == ("average", "fisher", "regmean", "task_arithmetic", "ties", "dare")
    defaults = MergeParams()
    for name, method in METHODS.items():
        assert type(getattr(defaults, name)) is method.params
    assert defaults.dare.p == 0.3 and defaults.ties.density == 0.2 and defaults.regmean.alpha == 0.1


def test_registry_imports_without_torch():
    code = "import sys, tasks.config, tasks.merge; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_method_names_the_registered_ones():
    with pytest.raises(ValueError, match="average, fisher, regmean, task_arithmetic, ties, dare"):
        get_method("slerp")


@pytest.mark.parametrize(
    "params",
    [
        {"ties": {"densty": 0.5}},
        {"dare": {"p": 1.0}},
        {"ties": {"density": 0}},
        {"regmean": {"alpha": 1.5}},
        {"fisher": {"batches": 0}},
        {"dare": {"combine": "slerp"}},
        {"slerp": {}},
    ],
)
def test_params_reject_unknown_keys_and_out_of_range_values(params):
    with pytest.raises(pydantic.ValidationError):
        MergeParams.model_validate(params)


@pytest.mark.parametrize("name", MERGER_NAMES)
def test_every_method_keeps_shape_and_dtype_of_half_precision_members(name):
    base, members = population()
    stats = {"fisher": [torch.rand(base.shape) for _ in members], "gram": [torch.eye(base.shape[1]) for _ in members], None: None}
    group = TensorGroup("w", [m.half() for m in members], base=base.half(), stats=stats[METHODS[name].statistic], seed=1)
    merged = merge(name, group)
    assert merged.dtype == torch.float16 and merged.shape == base.shape and torch.isfinite(merged).all()


# -- average, fisher, regmean -----------------------------------------------------------------------------


def test_average_is_the_mean():
    _, members = population()
    torch.testing.assert_close(merge("average", TensorGroup("w", members)), (members[0] + members[1] + members[2]) / 3)


def test_fisher_with_equal_diagonals_or_none_is_the_average():
    _, members = population()
    fisher = torch.rand(members[0].shape)
    average = merge("average", TensorGroup("w", members))
    torch.testing.assert_close(merge("fisher", TensorGroup("w", members, stats=[fisher] * 3)), average)
    torch.testing.assert_close(merge("fisher", TensorGroup("w", members, stats=None)), average)
    # smoothing=0 and a coordinate no member is sensitive to: the average there, not 0/0
    zero = torch.zeros_like(fisher)
    torch.testing.assert_close(merge("fisher", TensorGroup("w", members, stats=[zero] * 3), smoothing=0.0), average)


def test_fisher_leans_towards_the_member_with_larger_fisher():
    a, b = torch.zeros(4), torch.ones(4)
    fisher = [torch.tensor([1.0, 1.0, 3.0, 0.0]), torch.tensor([1.0, 3.0, 1.0, 1.0])]
    merged = merge("fisher", TensorGroup("w", [a, b], stats=fisher))
    torch.testing.assert_close(merged, torch.tensor([0.5, 0.75, 0.25, 1.0]))


def test_regmean_alpha_one_is_least_squares_on_the_pooled_inputs():
    g = torch.Generator().manual_seed(0)
    n_in, n_out, rows = 5, 4, 50
    weights = [torch.randn(n_out, n_in, generator=g, dtype=torch.float64) for _ in range(3)]
    inputs = [torch.randn(rows, n_in, generator=g, dtype=torch.float64) * torch.linspace(0.2, 3, n_in, dtype=torch.float64) for _ in weights]
    targets = [x @ w.T for x, w in zip(inputs, weights)]
    expected = torch.linalg.lstsq(torch.cat(inputs), torch.cat(targets)).solution.T
    grams = [(x.T @ x / rows).float() for x in inputs]  # what input_grams returns
    merged = merge("regmean", TensorGroup("w", [w.float() for w in weights], stats=grams), alpha=1.0)
    torch.testing.assert_close(merged, expected.float(), atol=1e-5, rtol=1e-5)
    assert (merged - merge("average", TensorGroup("w", [w.float() for w in weights]))).abs().max() > 0.1


def test_regmean_alpha_zero_weights_each_input_column_by_its_energy():
    """With only the diagonals left, column j is the mean of the members' columns weighted by G_i[j, j]."""
    weights = [torch.zeros(2, 3), torch.ones(2, 3)]
    grams = [torch.diag(torch.tensor([1.0, 3.0, 2.0])) + 0.5, torch.diag(torch.tensor([1.0, 1.0, 6.0])) + 0.5]
    merged = merge("regmean", TensorGroup("w", weights, stats=grams), alpha=0.0)
    torch.testing.assert_close(merged, torch.tensor([[0.5, 1.5 / 5, 6.5 / 9]]).expand(2, 3))


class _CountingReads(list):
    """Tensors handed out one read at a time, as `stages._ReadOnAccess` does; counts the reads."""

    reads = 0

    def __getitem__(self, i):
        self.reads += 1
        return super().__getitem__(i).clone()

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _regmean_by_one_solve(weights, grams, alpha, input_major):
    """RegMean as the formula reads: sum the whole regularised float64 matrices, one solve_ex."""
    gram_sum, rhs = 0, 0
    for w, g in zip(weights, grams):
        g = g.double()
        g = alpha * g + (1 - alpha) * torch.diag(torch.diagonal(g))
        gram_sum, rhs = gram_sum + g, rhs + g @ (w.double() if input_major else w.double().T)
    solution = torch.linalg.solve_ex(gram_sum, rhs)[0]
    return (solution if input_major else solution.T).float()


@pytest.mark.parametrize("input_major", [False, True])
def test_regmean_blocked_in_place_solve_gives_the_bits_of_one_solve(input_major, monkeypatch):
    """The Gram sum is built in blocks of rows and factorised in place, to hold one float64 matrix: the bits
    must stay those of summing whole matrices and calling solve_ex (Gram matrices from a float32 matmul are
    not exactly symmetric, so a transposed factorisation would differ)."""
    monkeypatch.setattr("tasks.merge.regmean.SUM_BLOCK_ROWS", 7)  # several blocks, the last one short
    g = torch.Generator().manual_seed(3)
    n_in, n_out = 30, 11
    shape = (n_in, n_out) if input_major else (n_out, n_in)
    weights = [torch.randn(shape, generator=g) for _ in range(3)]
    grams = []
    for _ in weights:
        x = torch.randn(64, n_in, generator=g) * torch.linspace(0.1, 4, n_in)
        # A large float32 matmul leaves X^T X asymmetric in its last bits; this one is small, so perturb it.
        grams.append(x.T @ x / 64 + 1e-6 * torch.randn(n_in, n_in, generator=g))
    assert not torch.equal(grams[0], grams[0].T)
    lazy_weights, lazy_grams = _CountingReads(weights), _CountingReads(grams)
    merged = merge("regmean", TensorGroup("w", lazy_weights, stats=lazy_grams, input_major=input_major), alpha=0.1)
    assert torch.equal(merged, _regmean_by_one_solve(weights, grams, 0.1, input_major))
    assert lazy_weights.reads == 1 + len(weights) and lazy_grams.reads == 2 * len(grams)


def test_regmean_singular_gram_sum_falls_back_to_the_pseudo_inverse():
    """A feature that is zero on every member's inputs leaves the sum singular: the in-place factorisation has
    overwritten it, so the fallback rebuilds it."""
    g = torch.Generator().manual_seed(4)
    weights = [torch.randn(3, 4, generator=g) for _ in range(2)]
    grams = []
    for _ in weights:
        x = torch.randn(20, 4, generator=g)
        x[:, 2] = 0
        grams.append(x.T @ x / 20)
    merged = merge("regmean", TensorGroup("w", weights, stats=grams), alpha=1.0)
    gram_sum = sum(gr.double() for gr in grams)
    rhs = sum(gr.double() @ w.double().T for w, gr in zip(weights, grams))
    torch.testing.assert_close(merged, (torch.linalg.pinv(gram_sum) @ rhs).T.float())
    assert torch.isfinite(merged).all()


def test_regmean_averages_tensors_without_a_gram_matrix():
    _, members = population()
    average = merge("average", TensorGroup("w", members))
    torch.testing.assert_close(merge("regmean", TensorGroup("w", members, stats=None)), average)
    bias = [m[0] for m in members]
    torch.testing.assert_close(merge("regmean", TensorGroup("b", bias, stats=None)), average[0])


# -- task arithmetic, TIES, DARE ---------------------------------------------------------------------------


def test_task_arithmetic_adds_scaled_task_vectors():
    base, members = population()
    merged = merge("task_arithmetic", TensorGroup("w", members, base=base), lam=0.4)
    torch.testing.assert_close(merged, base + 0.4 * sum(m - base for m in members))


def test_ties_trims_elects_and_takes_the_disjoint_mean():
    base = torch.tensor([10.0, 20.0, 30.0, 40.0])
    taus = [torch.tensor([4.0, -1.0, 0.5, -3.0]), torch.tensor([-2.0, 3.0, 0.1, -1.0]), torch.tensor([3.0, -5.0, 0.5, 0.2])]
    # trimmed (k=2): [4,0,0,-3], [-2,3,0,0], [3,-5,0,0]; sums [5,-2,0,-3] elect [+,-,+,-];
    # agreeing: {4,3}, {-5}, none, {-3}
    merged = merge("ties", TensorGroup("w", [base + t for t in taus], base=base), density=0.5, lam=0.5)
    torch.testing.assert_close(merged, base + 0.5 * torch.tensor([3.5, -5.0, 0.0, -3.0]))
    # a zero sum elects + (mergekit's rule): only the positive entry counts
    opposed = merge("ties", TensorGroup("w", [torch.tensor([1.0]), torch.tensor([-1.0])], base=torch.zeros(1)), density=1.0)
    torch.testing.assert_close(opposed, torch.tensor([1.0]))


def test_ties_keeps_every_entry_tied_with_the_kth_largest():
    base = torch.zeros(4)
    merged = merge("ties", TensorGroup("w", [torch.tensor([2.0, -2.0, 2.0, 1.0])], base=base), density=0.25)
    torch.testing.assert_close(merged, torch.tensor([2.0, -2.0, 2.0, 0.0]))  # k = 1, but three entries tie for first


def test_ties_with_density_one_and_agreeing_signs_is_task_arithmetic_over_n():
    base, members = population()
    signs = torch.randn(base.shape, generator=torch.Generator().manual_seed(5)).sign()
    members = [base + signs * (m - base).abs() for m in members]  # every member moves each coordinate the same way
    ties = merge("ties", TensorGroup("w", members, base=base), density=1.0, lam=0.9)
    torch.testing.assert_close(ties, merge("task_arithmetic", TensorGroup("w", members, base=base), lam=0.9 / 3))


@pytest.mark.parametrize("combine, params", [("average", {}), ("task_arithmetic", {"lam": 0.6}), ("ties", {"lam": 0.6, "density": 0.4})])
def test_dare_without_dropping_is_its_combine_method(combine, params):
    base, members = population(shape=(30, 20))
    group = TensorGroup("w", members, base=base, seed=3)
    torch.testing.assert_close(merge("dare", group, p=0.0, combine=combine, **params), merge(combine, group, **params), rtol=1e-6, atol=1e-6)


def test_dare_masks_are_seeded_per_member_and_survivors_rescaled():
    base = torch.zeros(100, 100)
    members = [torch.full((100, 100), 1.0), torch.full((100, 100), 1.0)]
    merged = merge("dare", TensorGroup("w", members, base=base, seed=7), p=0.3, combine="task_arithmetic")
    again = merge("dare", TensorGroup("w", members, base=base, seed=7), p=0.3, combine="task_arithmetic")
    other = merge("dare", TensorGroup("w", members, base=base, seed=8), p=0.3, combine="task_arithmetic")
    assert torch.equal(merged, again) and not torch.equal(merged, other)
    # each member contributes 0 or 1/(1-p): the sum takes 0, 1/0.7 (one survivor, masks differ) or 2/0.7
    values = torch.tensor([0.0, 1 / 0.7, 2 / 0.7])
    assert torch.isclose(merged.unsqueeze(-1), values).any(-1).all()
    share = torch.stack([torch.isclose(merged, v).float().mean() for v in values])
    torch.testing.assert_close(share, torch.tensor([0.09, 0.42, 0.49]), atol=0.03, rtol=0)  # p^2, 2p(1-p), (1-p)^2


# -- statistics --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def member(tiny_population):
    folder = tiny_population["members"][0]
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    label2id, num_labels = modelpool.labels(folder)
    data = taskpool.encode(
        [str(p) for p in tiny_population["dev"]],
        tokenizer=tiny.tokenizer(),
        text_column="text",
        label_column="label",
        label2id=label2id,
        num_labels=num_labels,
        max_length=64,
    )
    return model, data


def assert_left_clean(model, flags):
    assert all(p.grad is None for p in model.parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_fisher_diagonals_are_the_squared_gradients_of_the_predicted_label(member):
    model, data = member
    names = ["classifier.bias", "classifier.weight", "bert.encoder.layer.1.output.dense.weight", "bert.embeddings.word_embeddings.weight"]
    model.bert.embeddings.LayerNorm.weight.requires_grad_(False)  # a frozen flag must survive
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        rows = 24
        subset = {key: value[:rows] for key, value in data.items()}
        fisher = fisher_diagonals(model, subset, names, batches=rows, batch_size=1, seed=0)
        assert_left_clean(model, flags)
    finally:
        model.bert.embeddings.LayerNorm.weight.requires_grad_(True)
    params = dict(model.named_parameters())
    assert list(fisher) == names
    for name, value in fisher.items():
        assert value.shape == params[name].shape and value.dtype == torch.float32 and value.device.type == "cpu"
        assert (value >= 0).all() and value.sum() > 0
    # d(-log p_argmax)/d(classifier bias) = p - onehot(argmax): the bias's Fisher in closed form
    with torch.no_grad():
        probs = model(input_ids=subset["input_ids"].long(), attention_mask=subset["attention_mask"].long()).logits.softmax(-1)
    residual = probs - torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1])
    torch.testing.assert_close(fisher["classifier.bias"], (residual**2).mean(0), atol=1e-6, rtol=1e-4)
    # batches of 16 and 8 rows of the seeded permutation: squared gradients of the batch-mean losses, weighted by rows
    uneven = fisher_diagonals(model, subset, ["classifier.bias"], batches=2, batch_size=16, seed=0)["classifier.bias"]
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(0))
    expected = (16 * residual[order[:16]].mean(0) ** 2 + 8 * residual[order[16:]].mean(0) ** 2) / rows
    torch.testing.assert_close(uneven, expected, atol=1e-6, rtol=1e-4)


def test_input_grams_are_symmetric_psd_and_match_a_manual_computation(member):
    model, data = member
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    names = [n for n in dict(model.named_parameters()) if n.endswith("weight")]
    grams = input_grams(model, data, names, batches=1, batch_size=len(data["labels"]), seed=0)
    assert_left_clean(model, flags)
    linear = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert sorted(grams) == sorted(linear)  # LayerNorm and embedding weights have none
    for name, gram in grams.items():
        assert gram.shape == (linear[name].in_features,) * 2 and gram.dtype == torch.float32
        torch.testing.assert_close(gram, gram.T)
        assert torch.linalg.eigvalsh(gram.double()).min() > -1e-5
    # one batch of every row: the query's input is the embedding output at real tokens, the classifier's the pooled output
    with torch.no_grad():
        out = model.bert(input_ids=data["input_ids"].long(), attention_mask=data["attention_mask"].long(), output_hidden_states=True)
    tokens = out.hidden_states[0][data["attention_mask"].bool()].double()
    pooled = out.pooler_output.double()
    torch.testing.assert_close(grams["bert.encoder.layer.0.attention.self.query.weight"], (tokens.T @ tokens / len(tokens)).float())
    torch.testing.assert_close(grams["classifier.weight"], (pooled.T @ pooled / len(pooled)).float())


def test_statistics_use_the_seeded_first_batches(member):
    model, data = member
    names = ["classifier.weight"]
    one = input_grams(model, data, names, batches=1, batch_size=8, seed=1)["classifier.weight"]
    assert torch.equal(one, input_grams(model, data, names, batches=1, batch_size=8, seed=1)["classifier.weight"])
    assert not torch.equal(one, input_grams(model, data, names, batches=1, batch_size=8, seed=2)["classifier.weight"])
    assert not torch.equal(one, input_grams(model, data, names, batches=2, batch_size=8, seed=1)["classifier.weight"])


def test_kth_largest_in_place_equals_torch_kthvalue():
    """TIES's trim threshold by an in-place selection (no index tensor) is the very value kthvalue gives, ties included."""
    from tasks.merge.ties import kth_largest

    generator = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        magnitude = torch.randn(257, 33, generator=generator, dtype=dtype).abs()
        magnitude[:40] = magnitude[0, 0]  # many equal entries
        for k in (1, 2, 100, 1320, magnitude.numel() - 1, magnitude.numel()):
            expected = magnitude.flatten().kthvalue(magnitude.numel() - k + 1).values
            found = kth_largest(magnitude.clone(), k)
            assert found.dtype == dtype and found.item() == expected.item(), (dtype, k)
