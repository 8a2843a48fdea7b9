"""The memory monitors: a budget everywhere, NVML where a GPU answers (the gpu tests skip where none does)."""

import pytest

from mm.memory import BudgetMonitor, NvmlMonitor, monitor_for


def check_contract(state, resident):
    assert state.total > 0
    assert 0 <= state.free <= state.total
    assert state.used + state.free <= state.total or state.source == "nvml"
    if state.gpus:
        assert sum(g.total for g in state.gpus) == state.total


def test_the_budget_is_total_and_resident_models_use_it():
    state = BudgetMonitor(10_000).read(2_500)
    check_contract(state, 2_500)
    assert (state.source, state.total, state.used, state.free) == ("budget", 10_000, 2_500, 7_500)


def test_a_forced_budget_wins_over_nvml():
    assert isinstance(monitor_for(1234, use_nvml=True), BudgetMonitor)


@pytest.mark.gpu
def test_nvml_reports_every_gpu_with_total_used_and_free():
    monitor = NvmlMonitor()
    state = monitor.read(0)
    check_contract(state, 0)
    assert state.source == "nvml" and state.gpus
    assert all(g.total > 0 and g.name for g in state.gpus)


@pytest.mark.gpu
def test_nvml_can_be_limited_to_the_gpus_of_one_node():
    state = NvmlMonitor([0]).read(0)
    assert [g.index for g in state.gpus] == [0]

