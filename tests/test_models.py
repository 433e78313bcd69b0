import pytest
import torch

from freezetui import build_model, model_info
from freezetui.core.errors import ModelError
from freezetui.core.models import find_heads, list_models

# One model of each torchvision family, with the input size it needs and its head(s).
FAMILIES = [
    ("resnet18", 32, ["fc"]),
    ("alexnet", 64, ["classifier.6"]),
    ("vgg11", 32, ["classifier.6"]),
    ("densenet121", 32, ["classifier"]),
    ("squeezenet1_1", 64, ["classifier.1"]),
    ("mobilenet_v3_small", 32, ["classifier.3"]),
    ("mobilenet_v2", 32, ["classifier.1"]),
    ("efficientnet_b0", 32, ["classifier.1"]),
    ("shufflenet_v2_x0_5", 32, ["fc"]),
    ("mnasnet0_5", 32, ["classifier.1"]),
    ("regnet_y_400mf", 32, ["fc"]),
    ("convnext_tiny", 32, ["classifier.2"]),
    ("googlenet", 64, ["fc"]),
    ("inception_v3", 75, ["fc"]),
    ("vit_b_16", 224, ["heads.head"]),
    ("swin_t", 32, ["head"]),
]


@pytest.mark.parametrize("name, size, heads", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_head_replacement_on_each_family(name, size, heads):
    torch.manual_seed(0)
    model = build_model(name, weights="none", num_classes=7)
    assert model_info(model).new_modules == heads
    for h in heads:
        m = model.get_submodule(h)
        assert (m.out_features if hasattr(m, "out_features") else m.out_channels) == 7
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1, 7)


def test_list_models_has_classification_models_only():
    names = list_models()
    assert "resnet18" in names and "alexnet" in names
    assert "fasterrcnn_resnet50_fpn" not in names


def test_small_input_resnet_keeps_resolution():
    model = build_model("resnet18", weights="none", num_classes=10, small_input=True)
    assert model.conv1.stride == (1, 1) and isinstance(model.maxpool, torch.nn.Identity)
    assert model_info(model).new_modules == ["conv1", "fc"]
    with torch.no_grad():
        feats = torch.nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)(torch.randn(1, 3, 32, 32))
    assert feats.shape[-1] == 32


def test_small_input_refused_for_unsupported_family():
    with pytest.raises(ModelError, match="--small-input supports"):
        build_model("vgg11", weights="none", small_input=True)


def test_unknown_model_suggests_close_names():
    with pytest.raises(ModelError, match="did you mean resnet18"):
        build_model("resnet81", weights="none")


def test_unknown_weights_name_lists_choices():
    with pytest.raises(ModelError, match="IMAGENET1K_V1"):
        build_model("resnet18", weights="IMAGENET_V9")


def test_auto_weights_offline_falls_back_with_a_note():
    model = build_model("resnet18", weights="auto", num_classes=3)
    info = model_info(model)
    assert info.weights is None and "random init" in info.note


def test_state_dict_path_round_trips(tmp_path, tiny):
    model = build_model("tiny:tiny_cnn", weights="none")
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    again = build_model("tiny:tiny_cnn", weights=str(path))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert model_info(again).weights == str(path)
    # a saved fine-tuned model (already adapted) loads with nothing new
    tv = build_model("resnet18", weights="none", num_classes=4)
    torch.save(tv.state_dict(), tmp_path / "r.pt")
    back = build_model("resnet18", weights=str(tmp_path / "r.pt"), num_classes=4)
    assert model_info(back).new_modules == []
    assert torch.equal(back.fc.weight, tv.fc.weight)


def test_bad_weights_file_is_a_model_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(ModelError, match="is not a file torch.save wrote"):
        build_model("tiny:tiny_cnn", weights=str(bad))
    with pytest.raises(ModelError, match="does not exist"):
        build_model("resnet18", weights=str(tmp_path / "missing.pt"))


def test_factory_errors_are_clear():
    with pytest.raises(ModelError, match="cannot import"):
        build_model("no_such_pkg.mod:make", weights="none")
    with pytest.raises(ModelError, match="no callable"):
        build_model("tiny:nothing", weights="none")


def test_find_heads_on_plain_linear_stack():
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    assert find_heads(m) == ["2"]


# ----------------------------------------------------------------------------- plans are data


def test_factory_from_a_plan_needs_permission(tiny):
    with pytest.raises(ModelError, match="runs code named in a plan only when you also pass --model tiny:tiny_cnn"):
        build_model("tiny:tiny_cnn", weights="none", allow_code=False)
    assert build_model("tiny:tiny_cnn", weights="none", allow_code=True) is not None


def test_refused_factory_is_never_imported(tmp_path, monkeypatch):
    (tmp_path / "sideeffect_mod.py").write_text("raise SystemExit('imported!')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelError, match="the plan names the Python factory"):
        build_model("sideeffect_mod:make", weights="none", allow_code=False)


@pytest.mark.parametrize("name, message", [
    (":foo", "has no module before the colon"),
    ("foo:", "has no function after the colon"),
    ("a:b:c", "has more than one colon"),
    ("x y:z", "is not made of Python names"),
    ("os:system", r"the factory os:system raised TypeError: system\(\)"),
    ("os:getcwd", "returned str, not a torch.nn.Module"),
])
def test_bad_factory_names_are_one_sentence(name, message):
    with pytest.raises(ModelError, match=message) as e:
        build_model(name, weights="none")
    assert "\n" not in str(e.value)


def test_exception_inside_a_user_factory_is_named(tmp_path, monkeypatch):
    (tmp_path / "broken_factory.py").write_text(
        "def make():\n    raise ValueError('layer4 missing\\nsecond line')\n"
        "def boom_import():\n    pass\n")
    (tmp_path / "bad_import_mod.py").write_text("x = 1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelError) as e:
        build_model("broken_factory:make", weights="none")
    assert str(e.value) == "the factory broken_factory:make raised ValueError: layer4 missing"
    with pytest.raises(ModelError, match="importing 'bad_import_mod' .* raised ZeroDivisionError"):
        build_model("bad_import_mod:make", weights="none")


# ----------------------------------------------------------------------------- published weights

WEIGHT_SHAPES = ["resnet18", "vit_b_16", "googlenet", "inception_v3", "vgg11_bn", "densenet121", "maxvit_t",
                 "mnasnet0_5", "efficientnet_b0", "swin_t", "squeezenet1_1"]


@pytest.mark.parametrize("name", WEIGHT_SHAPES)
def test_pretrained_kwargs_build_what_torchvision_would(name, monkeypatch):
    # get_model(name, weights=None, **pretrained_kwargs) must have exactly the tensors that
    # get_model(name, weights=member) loads; checked on the meta device, nothing downloaded
    import collections

    import torchvision.models as tvm
    from torchvision.models._api import WeightsEnum

    from freezetui.core.models import pretrained_kwargs

    for member in tvm.get_model_weights(name):
        with torch.device("meta"):
            ours = tvm.get_model(name, weights=None, **pretrained_kwargs(name, member)).state_dict()
        fake = collections.OrderedDict((k, torch.empty(v.shape, device="meta")) for k, v in ours.items())
        fake._metadata = ours._metadata
        monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **k: fake)
        with torch.device("meta"):
            tvm.get_model(name, weights=member)  # strict load_state_dict: raises on any difference


def _fake_hub_file(monkeypatch, tmp_path, member, state) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = tmp_path / "hub" / "checkpoints" / member.url.rsplit("/", 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def test_published_weights_are_read_from_the_cache_with_weights_only(monkeypatch, tmp_path):
    import torchvision.models as tvm

    from freezetui.core import models as fm

    torch.manual_seed(1)
    ref = tvm.resnet18(weights=None)
    member = tvm.ResNet18_Weights.IMAGENET1K_V1
    _fake_hub_file(monkeypatch, tmp_path, member, ref.state_dict())
    seen = {}
    real = torch.hub.load_state_dict_from_url

    def spy(url, **kw):
        seen.update(kw)
        return real(url, **kw)

    monkeypatch.setattr(fm.torch.hub, "load_state_dict_from_url", spy)
    model = build_model("resnet18", weights="auto", num_classes=5)
    assert seen["weights_only"] is True and seen["check_hash"] is True
    info = model_info(model)
    assert info.weights == "IMAGENET1K_V1" and info.new_modules == ["fc"] and info.note == ""
    assert torch.equal(model.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)
    assert (info.input_size, info.resize_size, info.fixed_size) == (224, 256, False)


class _NotATensor:
    pass


def test_a_cached_file_with_pickled_objects_is_refused(monkeypatch, tmp_path):
    import torchvision.models as tvm

    _fake_hub_file(monkeypatch, tmp_path, tvm.ResNet18_Weights.IMAGENET1K_V1, {"fc.weight": _NotATensor()})
    with pytest.raises(ModelError, match="holds Python objects besides tensors"):
        build_model("resnet18", weights="IMAGENET1K_V1")


def test_vit_weights_load_and_interpolate_to_another_size(monkeypatch, tmp_path):
    import torchvision.models as tvm

    torch.manual_seed(2)
    ref = tvm.vit_b_16(weights=None)
    state = {k: v.half() for k, v in ref.state_dict().items()}  # half the file size; cast on load
    _fake_hub_file(monkeypatch, tmp_path, tvm.ViT_B_16_Weights.IMAGENET1K_V1, state)
    del ref
    model = build_model("vit_b_16", weights="auto", num_classes=5)
    info = model_info(model)
    assert info.weights == "IMAGENET1K_V1" and info.new_modules == ["heads.head"]
    assert (info.input_size, info.fixed_size) == (224, True)
    assert torch.equal(model.conv_proj.weight, state["conv_proj.weight"].float())
    big = build_model("vit_b_16", weights="auto", num_classes=5, image_size=256)
    info = model_info(big)
    assert big.encoder.pos_embedding.shape == (1, (256 // 16) ** 2 + 1, 768)
    assert (info.input_size, info.min_size, info.spec()["image_size"]) == (256, (256, 256), 256)
    assert torch.equal(big.encoder.pos_embedding[:, 0], state["encoder.pos_embedding"][:, 0].float())  # class token
    with torch.no_grad():
        assert big.eval()(torch.randn(1, 3, 256, 256)).shape == (1, 5)
    with pytest.raises(ModelError, match="divisible by its patch size 16"):
        build_model("vit_b_16", weights="none", image_size=100)


# ----------------------------------------------------------------------------- aux heads


@pytest.mark.parametrize("name, size", [("googlenet", 64), ("inception_v3", 75)])
def test_aux_heads_are_removed_and_every_parameter_gets_a_gradient(name, size):
    torch.manual_seed(0)
    model = build_model(name, weights="none", num_classes=5)
    assert find_heads(model) == ["fc"] and model_info(model).new_modules == ["fc"]
    model.train()
    out = model(torch.randn(2, 3, size, size))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5)
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 3])).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    model.eval()
    with torch.no_grad():
        assert isinstance(model(torch.randn(1, 3, size, size)), torch.Tensor)


# ----------------------------------------------------------------------------- weights from a run


def test_run_weights_with_another_head_size(tmp_path):
    torch.manual_seed(0)
    run = build_model("alexnet", weights="none", num_classes=10, small_input=True)
    torch.save(run.state_dict(), tmp_path / "model.pt")
    path = str(tmp_path / "model.pt")
    model = build_model("alexnet", weights=path, num_classes=5, small_input=True)
    info = model_info(model)
    assert info.new_modules == ["classifier.6"] and info.num_classes == 5
    assert info.note == (f"loaded 14 of 16 tensors from {path}; classifier.6.weight, classifier.6.bias "
                         f"did not fit (new head of 5)")
    assert torch.equal(model.features[0].weight, run.features[0].weight)
    assert model.classifier[6].out_features == 5
    # without --num-classes the head is sized from the file
    same = build_model("alexnet", weights=path, small_input=True)
    assert model_info(same).num_classes == 10 and model_info(same).new_modules == [] and model_info(same).note == ""
    assert torch.equal(same.classifier[6].weight, run.classifier[6].weight)


def test_run_weights_resnet_and_a_file_for_another_architecture(tmp_path):
    run = build_model("resnet18", weights="none", num_classes=10, small_input=True)
    torch.save(run.state_dict(), tmp_path / "model.pt")
    model = build_model("resnet18", weights=str(tmp_path / "model.pt"), num_classes=5, small_input=True)
    assert model_info(model).new_modules == ["fc"]
    assert torch.equal(model.conv1.weight, run.conv1.weight)
    # an ImageNet-style file for the 7x7 stem: the small-input stem stays new too
    big = build_model("resnet18", weights=str(tmp_path / "model.pt"), num_classes=5)
    assert model_info(big).new_modules == ["conv1", "fc"]
    with pytest.raises(ModelError, match=r"fit only 0 of \d+ tensors of alexnet; they are for another architecture"):
        build_model("alexnet", weights=str(tmp_path / "model.pt"), num_classes=5)


# ----------------------------------------------------------------------------- timm

TIMM_MODELS = [("resnet18", ["fc"]), ("convnext_atto", ["head.fc"]), ("efficientnet_b0", ["classifier"]),
               ("vit_tiny_patch16_224", ["head"])]


@pytest.mark.parametrize("arch, heads", TIMM_MODELS, ids=[a for a, _ in TIMM_MODELS])
def test_timm_models_build_with_a_new_head(arch, heads):
    pytest.importorskip("timm")
    from freezetui import FreezePlan

    model = build_model(f"timm:{arch}", weights="none", num_classes=5)
    info = model_info(model)
    assert info.new_modules == heads and find_heads(model) == heads
    assert info.input_size == 224 and info.fixed_size == arch.startswith("vit")
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 5)
    plan = FreezePlan.from_model(model)
    plan.freeze("*")
    plan.unfreeze(heads[0])
    again = FreezePlan.from_dict(plan.to_dict())
    assert again.model["name"] == f"timm:{arch}" and again.new_modules == heads
    again.apply(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {f"{heads[0]}.weight", f"{heads[0]}.bias"}


def test_timm_names_are_data_and_errors_are_one_sentence():
    pytest.importorskip("timm")
    model = build_model("timm:resnet18", weights="auto", num_classes=3, allow_code=False)  # no permission needed
    assert model_info(model).weights is None and "random init" in model_info(model).note  # offline
    with pytest.raises(ModelError, match=r"unknown timm model 'resnt18'; did you mean timm:resnet18"):
        build_model("timm:resnt18", weights="none")
    with pytest.raises(ModelError, match="needs a timm model name"):
        build_model("timm:", weights="none")


def test_timm_missing_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(ModelError, match=r"timm is not installed: pip install 'freezetui\[timm\]'"):
        build_model("timm:resnet18", weights="none")


def test_torch_download_line_becomes_the_apps_note(monkeypatch, capsys):
    import sys

    import torch
    import torchvision

    from freezetui.core import models

    state = torchvision.models.resnet18(weights=None).state_dict()

    def fake_download(url, **kw):
        sys.stderr.write(f'Downloading: "{url}" to somewhere\n')
        return state

    monkeypatch.setattr(models, "_offline", lambda: False)
    monkeypatch.setattr(models, "_weights_cached", lambda w: False)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    model = build_model("resnet18", weights="auto", num_classes=3)
    assert "Downloading" not in capsys.readouterr().err
    assert model_info(model).weights == "IMAGENET1K_V1" and model_info(model).note.startswith("downloaded ")
