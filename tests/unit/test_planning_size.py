"""The size the leader plans with before a model's first load teaches the real one."""

from mm.registry import ModelEntry
from mm.scheduling.reader import planning_size


def test_an_unlearned_estimate_above_the_largest_node_is_capped_so_the_model_is_tried():
    big = ModelEntry("big", tag_size=20, size_estimate=26)
    assert planning_size(big, largest_node=24, margin=1) == 23
    assert planning_size(ModelEntry("huge", tag_size=40, size_estimate=52), 24, 1) == 40  # never below the tag
    assert planning_size(ModelEntry("small", tag_size=2, size_estimate=3), 24, 1) == 3
    assert planning_size(ModelEntry("known", tag_size=20, size_estimate=26, learned_size=21), 24, 1) == 21
    assert planning_size(ModelEntry("under", tag_size=10, size_estimate=5), 24, 1) == 5  # the cap only lowers
