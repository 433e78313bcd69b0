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
    with pytest.raises(ModelError, match="cannot read weights"):
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
