"""Bad input is refused before compute: every case of `python -m bench.reliability --inputs`, one test each."""

import pytest

from bench import reliability


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    return reliability.build_population(tmp_path_factory.mktemp("reliability"))


@pytest.mark.parametrize("case", reliability.CASES, ids=[c.name for c in reliability.CASES])
def test_bad_input_is_refused_before_compute(case, population, tmp_path):
    result = reliability.run_case(case, population, tmp_path)
    assert result["rejected"], f"{case.name}: {'; '.join(result['problems'])}; last line: {result['message']}"


def test_the_valid_run_each_case_starts_from_runs_and_registers(population, tmp_path):
    """The harness can tell a rejection from a run: the unbroken config finishes, computes and registers."""
    unbroken = reliability.Case("unbroken", "nothing", "nothing to expect", lambda w: None)
    result = reliability.run_case(unbroken, population, tmp_path)
    assert not result["rejected"]
    assert result["problems"][0] == "exit 0" and any(p.startswith("computed:") for p in result["problems"])
    assert any(p.startswith("registered") for p in result["problems"])
