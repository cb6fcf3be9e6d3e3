"""The greedy loop's decisions, without Ray or lm-eval: pairs, exploration, top-k, stopping."""

from __future__ import annotations

import math

import pytest

from llm_evo.pool import algorithm as algo

# A made-up kinship table: lower = less related.
KIN = {("a", "b"): 0.9, ("a", "c"): 0.5, ("b", "c"): 0.7, ("a", "x"): 0.1, ("a", "y"): 0.3,
       ("b", "x"): 0.2, ("c", "x"): 0.4}


def kin(p: str, q: str) -> float:
    return KIN.get(algo.pair_key(p, q), math.nan)


def test_top_k_ranks_by_score_and_keeps_the_older_model_on_a_tie():
    members = [algo.Member("old", 1.0, 1), algo.Member("new", 1.0, 5),
               algo.Member("best", 2.0, 3), algo.Member("low", 0.5, 2)]
    assert algo.select_top_k(members, 2) == ["best", "old"]
    assert algo.select_top_k(members, 3) == ["best", "old", "new"]


def test_round_merges_every_new_pair_then_the_best_with_its_least_related_model():
    plan = algo.plan_round(["a", "b", "c"], ["x", "y"], set(), kin, "pcc", exploration=True)
    assert [(p.a, p.b, p.exploration) for p in plan] == [
        ("a", "b", False), ("a", "c", False), ("b", "c", False), ("a", "x", True)]


def test_without_exploration_the_round_is_the_plain_greedy_pairs():
    plan = algo.plan_round(["a", "b", "c"], ["x"], set(), kin, "pcc", exploration=False)
    assert [(p.a, p.b) for p in plan] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert not any(p.exploration for p in plan)


def test_pairs_merged_before_are_never_merged_again():
    merged = {algo.pair_key("a", "b"), algo.pair_key("a", "x")}
    plan = algo.plan_round(["a", "b", "c"], ["x", "y"], merged, kin, "pcc", exploration=True)
    # a-x was the least related partner, but it exists already: the next one (y) is used
    assert [(p.a, p.b, p.exploration) for p in plan] == [
        ("a", "c", False), ("b", "c", False), ("a", "y", True)]


def test_exploration_may_pick_a_top_k_member_whose_pair_with_the_best_is_new():
    merged = {algo.pair_key("a", "b")}  # a-c is planned this round; a-b exists
    plan = algo.plan_round(["a", "b", "c"], [], merged, kin, "pcc", exploration=True)
    assert [(p.a, p.b, p.exploration) for p in plan] == [("a", "c", False), ("b", "c", False)]


def test_for_ed_the_least_related_partner_is_the_most_distant():
    distances = {("a", "x"): 5.0, ("a", "y"): 9.0}
    partner = algo.exploration_partner(
        "a", ["x", "y"], lambda p, q: distances[algo.pair_key(p, q)], "ed", set())
    assert partner == "y"


def test_nan_kinship_ranks_after_every_defined_value():
    assert algo.exploration_partner("a", ["z", "y"], kin, "pcc", set()) == "y"
    assert algo.exploration_partner("a", ["z"], kin, "pcc", set()) == "z"
    assert algo.exploration_partner("a", [], kin, "pcc", set()) is None


def test_generation_one_is_every_pair_of_the_inputs():
    assert len(algo.all_pairs(["p", "q", "r", "s"])) == 6


def test_mean_kinship_and_the_stop_threshold():
    assert algo.mean_kinship(["a", "b", "c"], kin) == pytest.approx((0.9 + 0.5 + 0.7) / 3)
    assert math.isnan(algo.mean_kinship(["a", "z"], kin))
    assert algo.kinship_passed(0.95, 0.9, "pcc")
    assert not algo.kinship_passed(0.85, 0.9, "pcc")
    assert algo.kinship_passed(1.0, 2.0, "ed") and not algo.kinship_passed(3.0, 2.0, "ed")
    assert not algo.kinship_passed(0.99, None, "pcc")
    assert not algo.kinship_passed(math.nan, 0.5, "pcc")


def test_exploration_needs_a_kinship_function():
    with pytest.raises(ValueError, match="kinship"):
        algo.plan_round(["a", "b"], ["x"], set(), None, "pcc", exploration=True)
