from freezetui import FreezePlan, build_model, lint
from freezetui.core.lints import check


def render(lint, style="cli"):
    """The words each front end gives one of the core's lints, severity first."""
    from freezetui.cli import lint_text as cli_text
    from freezetui.tui.format import lint_text as tui_text

    return f"{lint.severity}: " + (cli_text if style == "cli" else tui_text)(lint)


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


def test_messages_carry_no_flags_and_render_per_style(tiny):
    model = build_model("alexnet", weights="none", num_classes=10, small_input=True)
    plan = FreezePlan.from_model(model, batchnorm="train")
    plan.freeze("features.*")
    new = lint(plan, model)[0]
    assert new.fix == ("unfreeze", "features.0") and "--" not in new.message
    assert render(new, "cli").endswith("; unfreeze it with --unfreeze 'features.0'")
    assert render(new, "tui").endswith("; unfreeze features.0 (space on it, or / glob)")
    assert str(new) == f"error: {new.message}" and str(new).startswith("error: features.0 is new")
    tmodel = tiny()
    tplan = FreezePlan.from_model(tmodel, batchnorm="train")
    tplan.freeze("stem")
    bn = [l for l in check(tplan, tmodel) if l.code == "frozen-bn-train"][0]
    assert bn.fix == ("batchnorm", "freeze") and "--bn" not in bn.message
    assert render(bn, "cli").endswith("; use --bn freeze")
    assert render(bn, "tui").endswith("; b keeps BatchNorm statistics")
    for l in check(tplan, tmodel) + lint(plan, model, image_size=8, min_size=(63, 63)):
        assert "--" not in l.message


def test_input_too_small_advises_small_input_only_where_supported():
    alex = FreezePlan.from_model(build_model("alexnet", weights="none", num_classes=10))
    found = [l for l in check(alex, image_size=32, min_size=(63, 63)) if l.code == "input-too-small"][0]
    assert render(found) .endswith("use --image-size 63 or larger, or --small-input")
    vgg = FreezePlan.from_model(build_model("vgg11", weights="none", num_classes=10))
    found = [l for l in check(vgg, image_size=16, min_size=(32, 32)) if l.code == "input-too-small"][0]
    assert found.fix == ("image_size", 32) and "small-input" not in render(found)
    assert render(found, "tui").endswith("set image size in settings (c)")


def test_fixed_size_model_seeing_another_size_is_an_error():
    model = build_model("vit_b_16", weights="none", num_classes=3)
    plan = FreezePlan.from_model(model)
    found = [l for l in check(plan, model, image_size=160) if l.code == "fixed-size"]
    assert found and found[0].severity == "error" and found[0].fix == ("image_size", 224)
    assert "224 px" in found[0].message and "160 px" in found[0].message
    assert "fixed-size" not in codes(check(plan, model, image_size=224))
    resnet = build_model("resnet18", weights="none", num_classes=3)
    assert "fixed-size" not in codes(check(FreezePlan.from_model(resnet), resnet, image_size=160))
