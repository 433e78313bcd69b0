"""Property tests: whatever JSON reaches the plan loader, the only exception is PlanError, and
a valid plan round-trips exactly."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freezetui import FreezePlan, PlanError

json_scalars = st.none() | st.booleans() | st.integers(-10, 10**12) | st.floats(allow_nan=False) | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
names = st.from_regex(r"[a-z]{1,5}(\.[0-9]{1,2}){0,2}\.(weight|bias)", fullmatch=True)


@st.composite
def valid_plans(draw):
    params = draw(st.lists(names, min_size=1, max_size=12, unique=True))
    frozen = draw(st.lists(st.sampled_from(params), unique=True))
    trainable = [p for p in params if p not in frozen]
    total = draw(st.integers(0, 10**9))
    frozen_count = draw(st.integers(0, total))
    plan = {
        "version": 1,
        "model": {"name": draw(st.text(min_size=1, max_size=10)), "weights": draw(st.none() | st.text(max_size=10)),
                  "num_classes": draw(st.none() | st.integers(1, 1000)), "small_input": draw(st.booleans()),
                  "new_modules": draw(st.lists(st.text(max_size=8), max_size=3))},
        "batchnorm": draw(st.sampled_from(["train", "freeze"])),
        "frozen": frozen,
        "trainable": trainable,
        "counts": {"total": total, "trainable": total - frozen_count, "frozen": frozen_count},
    }
    plan.update(draw(st.dictionaries(st.sampled_from(["rules", "hyper", "note", "freezetui_version"]), json_values,
                                     max_size=2)))
    return plan


def _load(obj, tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(obj))
    return FreezePlan.load(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(json_values)
def test_arbitrary_json_raises_only_plan_error(tmp_path, value):
    try:
        _load(value, tmp_path)
    except PlanError:
        pass


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(valid_plans())
def test_valid_plans_round_trip_exactly(tmp_path, plan):
    loaded = _load(plan, tmp_path)
    assert loaded.to_dict() == plan
    again = _load(loaded.to_dict(), tmp_path)
    assert again.to_dict() == plan


@st.composite
def mutated_plans(draw):
    plan = draw(valid_plans())
    for _ in range(draw(st.integers(1, 3))):
        model = plan.get("model")
        target = model if isinstance(model, dict) and draw(st.booleans()) else plan
        key = draw((st.sampled_from(sorted(target)) | st.text(max_size=6)) if target else st.text(max_size=6))
        action = draw(st.sampled_from(["delete", "replace"]))
        if action == "delete":
            target.pop(key, None)
        else:
            target[key] = draw(json_values)
    return plan


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutated_plans())
def test_mutated_plans_raise_only_plan_error(tmp_path, plan):
    try:
        loaded = _load(plan, tmp_path)
    except PlanError:
        return
    # what loads must survive its own round trip
    assert _load(loaded.to_dict(), tmp_path).to_dict() == loaded.to_dict()
