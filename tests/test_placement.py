"""Placement policy: expert selection and ranks from a routing profile, worked out by hand."""

from __future__ import annotations

import pytest

from align.moe.placement import assign_ranks, plan_size, select_experts

SHARES = [[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]]


def test_all_and_none():
    assert select_experts("all", None, 2, 4) == {0: [0, 1, 2, 3], 1: [0, 1, 2, 3]}
    assert select_experts("none", None, 2, 4) == {}


def test_top_p_keeps_most_used_until_share_reaches_p():
    # layer 0: 0.5 -> 0.8 (>= 0.6) after experts 0, 1; layer 1: ties broken by index, 0.25, 0.5, 0.75
    assert select_experts({"top_p": 0.6}, SHARES, 2, 4) == {0: [0, 1], 1: [0, 1, 2]}
    assert select_experts({"top_p": 0.5}, SHARES, 2, 4) == {0: [0], 1: [0, 1]}


def test_top_k_per_layer_and_explicit():
    assert select_experts({"top_k_per_layer": 1}, SHARES, 2, 4) == {0: [0], 1: [0]}
    assert select_experts({0: [3, 1], 1: []}, None, 2, 4) == {0: [1, 3], 1: []}
    with pytest.raises(ValueError, match="out of range"):
        select_experts({0: [4]}, None, 2, 4)
    with pytest.raises(ValueError, match="needs a routing profile"):
        select_experts({"top_p": 0.5}, None, 2, 4)


def test_rank_by_load_is_proportional_and_clamped():
    selected = {0: [0, 1, 2], 1: [0]}
    # layer 0 mean share (0.5 + 0.3 + 0.15) / 3 = 0.3167: ranks 8 * share / mean = 12.6, 7.6, 3.8 -> 13, 8, 4
    assert assign_ranks(selected, SHARES, r=8, rank_by_load=True) == {0: {0: 13, 1: 8, 2: 4}, 1: {0: 8}}
    assert assign_ranks(selected, SHARES, r=8, rank_by_load=True, min_rank=5, max_rank=10) == {
        0: {0: 10, 1: 8, 2: 5},
        1: {0: 8},
    }
    assert assign_ranks({0: [1], 1: []}, None, r=4) == {0: {1: 4}}


def test_plan_size_counts_both_projections():
    # hidden 4, intermediate 6: per rank (4 + 12) + (6 + 4) = 26
    assert plan_size({0: {0: 2, 1: 1}}, hidden=4, intermediate=6) == 3 * 26
