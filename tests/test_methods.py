import pytest

from rtdetr_prune.errors import UserError
from rtdetr_prune.pruning.methods import METHODS, get_method

NAMES = ["l1", "random", "slim", "group_slim", "group_norm", "lamp", "group_sl", "group_reg", "group_hessian", "group_taylor"]


def test_registry_has_exactly_the_ten_methods():
    assert list(METHODS) == NAMES


def test_sparse_and_gradient_flags():
    assert {m.name for m in METHODS.values() if m.needs_sparse_training} == {"slim", "group_slim", "group_sl", "group_reg"}
    assert {m.name for m in METHODS.values() if m.needs_gradients} == {"group_taylor", "group_hessian"}


def test_each_method_builds_a_fresh_importance():
    for m in METHODS.values():
        a, b = m.importance(), m.importance()
        assert a is not b and callable(a)


@pytest.mark.parametrize("typo,expected", [("lmap", "lamp"), ("group_taylr", "group_taylor"), ("L1", "l1")])
def test_unknown_name_suggests_nearest(typo, expected):
    with pytest.raises(UserError, match=f"Did you mean '{expected}'"):
        get_method(typo)
