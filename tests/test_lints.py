from freezetui import FreezePlan, build_model, lint
from freezetui.core.lints import check


def codes(lints):
    return [l.code for l in lints]


def test_seed_bug_frozen_new_stem_is_flagged():
    model = build_model("alexnet", weights="none", num_classes=10, small_input=True)
    plan = FreezePlan.from_model(model)
    plan.freeze("features.*")
    found = lint(plan, model, image_size=32)
    assert codes(found)[0] == "frozen-new-module"
    assert found[0].module == "features.0" and found[0].severity == "error"
    assert "random" in found[0].message
    plan.unfreeze("features.0")
    assert "frozen-new-module" not in codes(lint(plan, model, image_size=32))


def test_input_smaller_than_min_size():
    model = build_model("alexnet", weights="none", num_classes=10)
    plan = FreezePlan.from_model(model)
    info_min = (63, 63)
    assert "input-too-small" in codes(check(plan, model, image_size=32, min_size=info_min))
    assert "input-too-small" not in codes(check(plan, model, image_size=64, min_size=info_min))


def test_nothing_trainable(tiny):
    plan = FreezePlan.from_model(tiny())
    plan.freeze("*")
    assert "nothing-trainable" in codes(check(plan))
    plan.unfreeze("fc")
    assert "nothing-trainable" not in codes(check(plan))


def test_frozen_batchnorm_with_train_mode(tiny):
    model = tiny()
    plan = FreezePlan.from_model(model, batchnorm="train")
    plan.freeze("stem")
    found = check(plan, model)
    assert "frozen-bn-train" in codes(found)
    assert "stem.1" in [l for l in found if l.code == "frozen-bn-train"][0].message
    plan.batchnorm = "freeze"
    assert "frozen-bn-train" not in codes(check(plan, model))


def test_trainable_below_frozen(tiny):
    plan = FreezePlan.from_model(tiny())
    plan.freeze("block1")
    found = [l for l in check(plan) if l.code == "trainable-below-frozen"]
    assert found and found[0].module == "stem.0"
    plan.freeze("stem")
    assert "trainable-below-frozen" not in codes(check(plan))
