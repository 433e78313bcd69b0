"""Build a torchvision (or user) model for a new task: weights, a new head, a small-input stem.

Every module this file re-initialises is recorded in ``ModelInfo.new_modules`` so that the
plan and the lints can tell pretrained layers from random ones.
"""

from __future__ import annotations

import difflib
import importlib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ModelError

INFO_ATTR = "_freezetui_info"


@dataclass
class ModelInfo:
    """What was built and how: travels with the model as an attribute."""

    name: str
    weights: str | None  # enum name, a path, or None for random init
    num_classes: int | None
    small_input: bool
    new_modules: list[str] = field(default_factory=list)
    note: str = ""  # e.g. why 'auto' fell back to random init
    min_size: tuple[int, int] = (1, 1)
    weights_enum: Any = None  # the torchvision Weights member, when pretrained

    def spec(self) -> dict:
        """The plan file's ``model`` block."""
        return {
            "name": self.name,
            "weights": self.weights,
            "num_classes": self.num_classes,
            "small_input": self.small_input,
            "new_modules": list(self.new_modules),
        }


def model_info(model: nn.Module) -> ModelInfo | None:
    return getattr(model, INFO_ATTR, None)


def list_models() -> list[str]:
    """Names of torchvision's classification models, usable with ``--model``."""
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _is_factory(name: str) -> bool:
    return ":" in name


def _load_factory(name: str) -> nn.Module:
    module_name, _, func_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelError(f"cannot import {module_name!r} for --model {name}: {e}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ModelError(f"{module_name!r} has no callable {func_name!r} (--model {name})")
    model = func()
    if not isinstance(model, nn.Module):
        raise ModelError(f"--model {name} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _weights_enum(name: str):
    import torchvision.models as tvm

    try:
        return tvm.get_model_weights(name)
    except (ValueError, KeyError):
        return None


def _weights_cached(weights) -> bool:
    filename = os.path.basename(weights.url)
    return (Path(torch.hub.get_dir()) / "checkpoints" / filename).is_file()


def _offline() -> bool:
    return os.environ.get("FREEZETUI_OFFLINE", "") not in ("", "0")


def _fetch_weights(weights) -> str | None:
    """Make sure the weights file is in torch's cache; return why not, or None on success."""
    if _offline():
        return "offline (FREEZETUI_OFFLINE is set)"
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=False)
    except Exception as e:  # noqa: BLE001 - any network failure means "not available"
        return f"not downloadable ({type(e).__name__})"
    finally:
        socket.setdefaulttimeout(old)
    return None


def _resolve_weights(name: str, weights: str | None):
    """Return (enum member or None, local path or None, note)."""
    enum = _weights_enum(name)
    if weights is None or str(weights).lower() == "none":
        return None, None, ""
    w = str(weights)
    if w.lower() == "auto":
        if enum is None:
            return None, None, f"{name} has no published weights: random init"
        default = enum.DEFAULT
        if _weights_cached(default):
            return default, None, ""
        why = _fetch_weights(default)
        if why is None:
            return default, None, ""
        return None, None, f"{default} not available {why}: using random init"
    if os.sep in w or w.endswith((".pt", ".pth", ".bin")) or Path(w).exists():
        if not Path(w).is_file():
            raise ModelError(f"weights file {w!r} does not exist")
        return None, w, ""
    if enum is None:
        raise ModelError(f"{name} has no published weights; use --weights none or a state_dict path")
    choices = [m.name for m in enum]
    key = w.split(".")[-1]
    if key not in choices:
        raise ModelError(f"unknown weights {w!r} for {name}; choose from {', '.join(choices)}, auto, none")
    member = enum[key]
    if not _weights_cached(member):
        why = _fetch_weights(member)
        if why is not None:
            raise ModelError(f"weights {member} are {why}; use --weights none or a local state_dict path")
    return member, None, ""


# ----------------------------------------------------------------------------- heads


def _out_size(m: nn.Module) -> int | None:
    if isinstance(m, nn.Linear):
        return m.out_features
    if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1):
        return m.out_channels
    return None


def find_heads(model: nn.Module) -> list[str]:
    """Names of the classification layers: the last Linear (or SqueezeNet's 1×1 conv) and any
    auxiliary heads of the same width (GoogLeNet, Inception)."""
    last_name, last = None, None
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)) and _out_size(m) is not None:
            last_name, last = name, m
    if last is None:
        return []
    width = _out_size(last)
    if isinstance(last, nn.Conv2d):
        return [last_name]
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == width]


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def replace_head(model: nn.Module, num_classes: int) -> list[str]:
    """Replace every classification head with a fresh layer of ``num_classes`` outputs."""
    heads = find_heads(model)
    if not heads:
        raise ModelError("found no Linear layer to use as the classification head")
    for name in heads:
        old = model.get_submodule(name)
        ref = next(old.parameters())
        if isinstance(old, nn.Linear):
            new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        else:
            new = nn.Conv2d(old.in_channels, num_classes, kernel_size=1)
        _set_submodule(model, name, new.to(device=ref.device, dtype=ref.dtype))
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
    return heads


# ----------------------------------------------------------------------------- small input

SMALL_INPUT_FAMILIES = "alexnet, resnet*, resnext*, wide_resnet*"


def supports_small_input(name: str) -> bool:
    return name == "alexnet" or name.startswith(("resnet", "resnext", "wide_resnet"))


def adapt_small_input(model: nn.Module, name: str) -> list[str]:
    """Adapt the stem for ~32 px images, as the seed does for AlexNet; return the new modules."""
    base = name
    if base == "alexnet":
        old = model.features[0]
        model.features[0] = nn.Conv2d(3, old.out_channels, kernel_size=5, stride=1)
        return ["features.0"]
    if base.startswith(("resnet", "resnext", "wide_resnet")):
        old = model.conv1
        model.conv1 = nn.Conv2d(3, old.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
        return ["conv1"]
    raise ModelError(f"--small-input supports {SMALL_INPUT_FAMILIES}, not {name}; use --image-size instead")


# ----------------------------------------------------------------------------- build


def unknown_model_message(name: str) -> str:
    close = difflib.get_close_matches(name, list_models(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `freezetui models` lists them"
    return f"unknown model {name!r}{hint}"


def _load_state(path: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same sentence
        raise ModelError(f"cannot read weights from {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return state


def build_model(
    name: str,
    weights: str | None = "auto",
    num_classes: int | None = None,
    small_input: bool = False,
) -> nn.Module:
    """Build ``name`` (a torchvision model or ``package.module:function``) ready for a new task.

    ``weights``: ``"auto"`` (DEFAULT weights when cached or downloadable, else random init with a
    note), ``"none"``/None, an enum name such as ``"IMAGENET1K_V1"``, or a state_dict path.
    The returned model carries a :class:`ModelInfo` (see :func:`model_info`).
    """
    import torchvision.models as tvm

    if num_classes is not None and num_classes < 1:
        raise ModelError(f"--num-classes must be positive, got {num_classes}")
    if small_input and not supports_small_input(name):
        raise ModelError(f"--small-input supports {SMALL_INPUT_FAMILIES}, not {name}; use --image-size instead")
    enum_member, path, note = None, None, ""
    if _is_factory(name):
        model = _load_factory(name)
        if weights not in (None, "none", "auto"):
            path = str(weights)
            if not Path(path).is_file():
                raise ModelError(f"weights file {path!r} does not exist")
    else:
        if name not in list_models():
            raise ModelError(unknown_model_message(name))
        enum_member, path, note = _resolve_weights(name, weights)
        model = tvm.get_model(name, weights=enum_member)
    def adapt() -> list[str]:
        added = adapt_small_input(model, name) if small_input else []
        if num_classes is not None:
            added += replace_head(model, num_classes)
        return added

    if path is None:
        new_modules = adapt()
    else:
        # A local state_dict is either for the original architecture (then adapt after loading)
        # or one this tool saved, already adapted (then nothing is new).
        state = _load_state(path)
        try:
            model.load_state_dict(state)
            new_modules = adapt()
        except RuntimeError:
            adapt()
            new_modules = []
            try:
                model.load_state_dict(state)
            except RuntimeError as e:
                raise ModelError(f"weights in {path} do not fit {name}: {str(e).splitlines()[0]}") from None
    min_size = (1, 1)
    enum = None if _is_factory(name) else _weights_enum(name)
    if enum is not None and not small_input:
        min_size = tuple(enum.DEFAULT.meta.get("min_size", (1, 1)))
    weights_label = enum_member.name if enum_member is not None else path
    info = ModelInfo(
        name=name,
        weights=weights_label,
        num_classes=num_classes,
        small_input=small_input,
        new_modules=new_modules,
        note=note,
        min_size=min_size,
        weights_enum=enum_member,
    )
    object.__setattr__(model, INFO_ATTR, info)
    return model

