import torch

from tasks import evolve


def test_offspring_is_mutation_where_mask_and_parent_elsewhere():
    x_i, x_r = torch.zeros(1000), torch.ones(1000)
    child = evolve.offspring_tensor(x_i, x_r, F=0.5, CR=0.3, seed=1, generation=1, individual=0, name="w")
    assert set(child.unique().tolist()) <= {0.0, 0.5}
    assert abs((child == 0.5).float().mean().item() - 0.3) < 0.05


def test_offspring_does_not_depend_on_tensor_order_and_is_not_a_view():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    first = evolve.offspring_tensor(a, b, F=0.5, CR=0.5, seed=3, generation=2, individual=1, name="x")
    evolve.offspring_tensor(b, a, F=0.5, CR=0.5, seed=3, generation=2, individual=1, name="other")
    again = evolve.offspring_tensor(a, b, F=0.5, CR=0.5, seed=3, generation=2, individual=1, name="x")
    assert torch.equal(first, again)
    first += 1
    assert not torch.equal(first, a)


def test_strict_acceptance():
    scored = [evolve.Scored(0, 1, 0.5), evolve.Scored(1, 0, 0.7)]
    assert evolve.plain_accepts(scored, [0.5, 0.6]) == [1]
    assert [s.target for s in evolve.merge_improvers(scored, 0.5)] == [1]
