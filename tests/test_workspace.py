"""The workspace behind the TUI, without Textual: the schedule edits behind its keys (E, x, L, R, X)
and the numbers the tree shows."""

import sys
from pathlib import Path

import pytest

from freezetui.core.errors import PlanError
from freezetui.core.plan import FreezePlan

sys.path.insert(0, str(Path(__file__).parent))
from tui.fakes import small_workspace  # noqa: E402


def cells(ws, name):
    """The tree's schedule columns for a node: the TUI's words for the workspace's numbers."""
    from freezetui.tui.format import schedule_cells

    return schedule_cells(ws.schedule_span(name))


def test_unfreeze_at_replaces_what_was_set_inside_the_subtree():
    ws = small_workspace()
    ws.unfreeze_at("block1.0", 2)
    ws.unfreeze_at("block1", 3)  # the whole block now: its conv's own stage goes
    assert [s.to_dict() for s in ws.plan.stages] == [{"epoch": 3, "unfreeze": ["block1"]}]
    assert ws.plan.stage_of("block1.0.weight") == 3
    assert cells(ws, "") == ("@1–3", "")  # the rest trains from the start
    assert cells(ws, "block1") == ("@3", "")


def test_a_later_epoch_under_an_earlier_catch_all_stage_adds_nothing():
    ws = small_workspace()
    ws.apply_recipe()  # head only, then "*" at epoch 2
    before = [s.to_dict() for s in ws.plan.stages]
    assert ws.unfreeze_at("block1", 4) == 2  # "*" unfreezes it at 2 already
    assert [s.to_dict() for s in ws.plan.stages] == before


def test_unfreeze_at_refuses_to_leave_nothing_for_epoch_one():
    ws = small_workspace()
    version = ws.version
    with pytest.raises(PlanError, match="nothing would train in epoch 1"):
        ws.unfreeze_at("", 2)
    ws.head_only()
    with pytest.raises(PlanError, match="nothing would train in epoch 1"):
        ws.unfreeze_at("fc", 3)
    assert ws.plan.stages == [] and ws.plan.trainable == ["fc.weight", "fc.bias"] and ws.version == version + 1


def test_names_with_glob_characters_are_escaped():
    ws = small_workspace()
    assert ws.glob_for("layers[0].conv") == "layers[[]0[]].conv" and ws.glob_for("") == "*"


def test_rates_and_layer_decay():
    ws = small_workspace()
    ws.set_rate("block1", 0.1)
    ws.set_rate("block1.0", 0.5)  # later rules win
    assert cells(ws, "block1") == ("", "×.1–.5")
    ws.set_layer_decay(None)  # decay is off already: the rates stay
    assert ws.plan.lr_mult == [("block1", 0.1), ("block1.0", 0.5)]
    ws.set_layer_decay(0.5)  # decay replaces them
    assert ws.plan.lr_mult == [] and ws.plan.layer_decay == 0.5
    with pytest.raises(PlanError, match="layer decay"):
        ws.set_rate("stem", 0.3)
    ws.clear_schedule()
    assert not ws.has_schedule()


def test_an_edit_forgets_how_the_plan_was_made():
    ws = small_workspace()
    ws.apply_recipe()
    assert ws.plan.extra["recipe"] == "fine-tune"
    ws.set_frozen("block1", False)
    assert "recipe" not in ws.plan.extra


def test_an_exported_schedule_loads_back_the_same(tmp_path):
    ws = small_workspace()
    ws.unfreeze_at("block2", 2)
    ws.set_rate("block2", 0.2)
    ws.export(tmp_path / "p.json")
    other = small_workspace()
    other.load_plan(tmp_path / "p.json")
    assert other.plan.schedule_dict() == ws.plan.schedule_dict() and other.plan.frozen == ws.plan.frozen
    assert FreezePlan.load(tmp_path / "p.json").stage_of("block2.0.weight") == 2
