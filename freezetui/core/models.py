"""Build a torchvision, timm or user model for a new task: weights, a new head, a small-input stem.

Every module this file re-initialises is recorded in ``ModelInfo.new_modules`` so that the
plan and the lints can tell pretrained layers from random ones. Weights are only ever read with
``torch.load(weights_only=True)``, and code named in a plan runs only when the user asked for it.
"""

from __future__ import annotations

import contextlib
import io

import difflib
import importlib
import math
import os
import re
import socket
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ModelError
from .readback import Unreadable, file_problem, torch_load

INFO_ATTR = "_freezetui_info"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TIMM_PREFIX = "timm:"


@dataclass
class ModelInfo:
    """What was built and how: travels with the model as an attribute."""

    name: str
    weights: str | None  # enum name, a path, "pretrained" (timm), or None for random init
    num_classes: int | None
    small_input: bool
    new_modules: list[str] = field(default_factory=list)
    note: str = ""  # e.g. why 'auto' fell back to random init, or which tensors did not load
    min_size: tuple[int, int] = (1, 1)
    weights_enum: Any = None  # the torchvision Weights member, when pretrained
    # what the input pipeline needs: the size the model expects by default (the weights' crop
    # when pretrained, the built size of a fixed-size architecture, else None), the resize before
    # that crop, the normalisation, and whether any other size fails
    input_size: int | None = None
    resize_size: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    fixed_size: bool = False
    image_size: int | None = None  # the size a ViT was built for, when asked for one

    def spec(self) -> dict:
        """The plan file's ``model`` block."""
        d = {
            "name": self.name,
            "weights": self.weights,
            "num_classes": self.num_classes,
            "small_input": self.small_input,
            "new_modules": list(self.new_modules),
        }
        if self.image_size is not None:
            d["image_size"] = self.image_size
        return d


def model_info(model: nn.Module) -> ModelInfo | None:
    return getattr(model, INFO_ATTR, None)


def list_models() -> list[str]:
    """Names of torchvision's classification models, usable with ``--model``."""
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


# ----------------------------------------------------------------------------- user factories

_PY_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_FACTORY = re.compile(rf"{_PY_NAME}(\.{_PY_NAME})*:{_PY_NAME}")


def is_timm(name: str) -> bool:
    return name.startswith(TIMM_PREFIX)


def is_factory(name: str) -> bool:
    """``package.module:function`` (code to run), as opposed to a torchvision or timm name (data)."""
    return ":" in name and not is_timm(name)


def check_factory_allowed(name: str, allowed: str | None) -> None:
    """A plan is data: one naming a Python factory is built only when the command line names
    the same factory (``allowed``)."""
    if is_factory(name) and name != allowed:
        raise ModelError(f"the plan names the Python factory {name}; freezetui runs code named in a plan "
                         f"only when you also pass --model {name}")


def _check_factory_name(name: str) -> None:
    if _FACTORY.fullmatch(name):
        return
    module_name, _, func_name = name.partition(":")
    if name.count(":") > 1:
        why = "has more than one colon"
    elif not module_name.strip():
        why = "has no module before the colon"
    elif not func_name.strip():
        why = "has no function after the colon"
    else:
        why = "is not made of Python names"
    raise ModelError(f"model name {name!r} {why}; write package.module:function")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _load_factory(name: str) -> nn.Module:
    _check_factory_name(name)
    module_name, _, func_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelError(f"cannot import {module_name!r} for --model {name}: {_first_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - whatever the user's module raises, one sentence
        raise ModelError(f"importing {module_name!r} for --model {name} raised {_first_line(e)}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ModelError(f"{module_name!r} has no callable {func_name!r} (--model {name})")
    try:
        model = func()
    except Exception as e:  # noqa: BLE001 - a factory that fails is the user's to fix, not a traceback
        raise ModelError(f"the factory {name} raised {_first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"--model {name} returned {type(model).__name__}, not a torch.nn.Module")
    return model


# ----------------------------------------------------------------------------- torchvision weights


def _weights_enum(name: str):
    import torchvision.models as tvm

    try:
        return tvm.get_model_weights(name)
    except (ValueError, KeyError):
        return None


def _cached_path(weights) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _weights_cached(weights) -> bool:
    return _cached_path(weights).is_file()


def _offline() -> bool:
    return os.environ.get("FREEZETUI_OFFLINE", "") not in ("", "0")


class _Unavailable(Exception):
    """The weights file is not cached and cannot be downloaded now."""


def _pretrained_state(weights) -> dict:
    """The state_dict of a torchvision Weights member: downloaded with its hash checked (the
    hash is in the file name) when not cached, and read with ``weights_only=True`` either way."""
    cached = _weights_cached(weights)
    if not cached and _offline():
        raise _Unavailable("not available offline (FREEZETUI_OFFLINE is set)")
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        # torch.hub defaults to weights_only=False and check_hash=False: ask for both explicitly;
        # its own "Downloading: ..." line goes to the caller's note instead (see _resolve_weights)
        with contextlib.redirect_stderr(io.StringIO()):
            state = torch.hub.load_state_dict_from_url(
                weights.url, map_location="cpu", progress=False, check_hash=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - sorted into sentences below
        if cached or _weights_cached(weights):
            raise _unreadable(_cached_path(weights), e) from None
        if "hash" in str(e).lower():
            raise ModelError(f"the download of {weights} does not match its published hash; "
                             f"it was not used ({_first_line(e)})") from None
        raise _Unavailable(f"not downloadable ({type(e).__name__})") from None
    finally:
        socket.setdefaulttimeout(old)
    if not isinstance(state, dict):
        raise ModelError(f"{_cached_path(weights)} holds a {type(state).__name__}, not a state_dict")
    return state


def check_weights_file(path: str) -> None:
    """A ``--weights`` path that cannot be a state_dict file: a sentence before any model is built."""
    why = file_problem(path)
    if why:
        raise ModelError(f"weights file {path!r} {why}")


def _unreadable(path, e: BaseException) -> ModelError:
    text = str(e).strip()
    if "weights only load failed" in text.lower() or "weights_only" in text:  # never quote its advice
        why = "it holds Python objects besides tensors, which freezetui does not unpickle"
    else:
        why = text.splitlines()[0] if text else type(e).__name__
    return ModelError(f"cannot read weights from {path}: {why}")


def _fetch_weights(weights) -> str | None:
    """Make sure the weights file is in torch's cache; return why not, or None on success."""
    try:
        _pretrained_state(weights)
    except _Unavailable as e:
        return str(e)
    return None


def _resolve_weights(name: str, weights: str | None):
    """Return (enum member or None, local path or None, note, state_dict of the member or None)."""
    enum = _weights_enum(name)
    if weights is None or str(weights).lower() == "none":
        return None, None, "", None
    w = str(weights)
    if w.lower() == "auto":
        if enum is None:
            return None, None, f"{name} has no published weights: random init", None
        default = enum.DEFAULT
        try:
            fetched = not _weights_cached(default)
            state = _pretrained_state(default)
            return default, None, f"downloaded {default} to {_cached_path(default)}" if fetched else "", state
        except _Unavailable as why:
            return None, None, f"{default} {why}: using random init", None
    if os.sep in w or w.endswith((".pt", ".pth", ".bin")) or Path(w).exists():
        check_weights_file(w)
        return None, w, "", None
    if enum is None:
        raise ModelError(f"{name} has no published weights; use --weights none or a state_dict path")
    choices = [m.name for m in enum]
    key = w.split(".")[-1]
    if key not in choices:
        raise ModelError(f"unknown weights {w!r} for {name}; choose from {', '.join(choices)}, auto, none")
    member = enum[key]
    try:
        return member, None, "", _pretrained_state(member)
    except _Unavailable as why:
        raise ModelError(f"weights {member} are {why}; use --weights none or a local state_dict path") from None


def pretrained_kwargs(name: str, weights) -> dict:
    """The builder arguments torchvision's ``get_model(name, weights=...)`` overrides from the
    weights' meta, so that ``get_model(name, weights=None, **these)`` has the same tensors."""
    kwargs: dict = {}
    if weights is None:
        return kwargs
    categories = weights.meta.get("categories")
    if categories is not None:
        kwargs["num_classes"] = len(categories)
    if name.startswith("vit_"):
        kwargs["image_size"] = weights.meta["min_size"][0]
    if name.startswith("maxvit"):
        kwargs["input_size"] = tuple(weights.meta["min_size"])
    if name in ("googlenet", "inception_v3"):
        kwargs.update(transform_input=True, aux_logits=True, init_weights=False)
    if name.startswith("vgg"):
        kwargs["init_weights"] = False
    return kwargs


_OLD_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _modernise_keys(name: str, state: dict) -> dict:
    """DenseNet's published files use the old ``norm.1`` key style that torchvision renames on load."""
    if not name.startswith("densenet"):
        return state
    out = {}
    for k, v in state.items():
        m = _OLD_DENSENET_KEY.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return _with_metadata(out, state)


def _with_metadata(new: dict, *sources: dict) -> OrderedDict:
    """``new`` carrying the module versions (``_metadata``) of the first source that has them:
    some modules (MNASNet) refuse a state_dict without its version."""
    out = OrderedDict(new)
    for src in sources:
        meta = getattr(src, "_metadata", None)
        if meta is not None:
            out._metadata = meta  # type: ignore[attr-defined]
            break
    return out


def _vit_patch(name: str) -> int:
    return int(name.rsplit("_", 1)[1])


def _vit_fit_positions(name: str, image_size: int, state: dict) -> dict:
    """Interpolate a ViT's position embeddings in ``state`` to ``image_size`` when they differ."""
    from torchvision.models.vision_transformer import interpolate_embeddings

    pos = state.get("encoder.pos_embedding")
    patch = _vit_patch(name)
    if pos is None or pos.shape[1] == (image_size // patch) ** 2 + 1:
        return state
    return _with_metadata(interpolate_embeddings(image_size, patch, state), state)


def drop_aux_heads(model: nn.Module) -> bool:
    """Remove GoogLeNet's / Inception v3's auxiliary classifiers: the loss uses only the main
    logits, so they would never get a gradient (and DDP fails on unused parameters). With
    ``aux_logits=False`` both forward modes return a plain tensor."""
    if not hasattr(model, "aux_logits"):
        return False
    model.aux_logits = False
    for attr in ("aux1", "aux2", "AuxLogits"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    return True


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


# ----------------------------------------------------------------------------- weights from a file


def unknown_model_message(name: str) -> str:
    close = difflib.get_close_matches(name, list_models(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `freezetui models` lists them"
    return f"unknown model {name!r}{hint}"


def _load_state(path: str) -> dict:
    try:
        state = torch_load(path)
    except Unreadable as e:
        raise ModelError(f"cannot read weights from {path}: it {e}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return state


def _size_heads_from_state(model: nn.Module, state: dict) -> int | None:
    """When the file's head has another width than the built model's, rebuild the head to it."""
    for head in find_heads(model):
        w = state.get(f"{head}.weight")
        old = model.get_submodule(head)
        if w is None or _out_size(old) is None or w.shape[0] == _out_size(old):
            continue
        if isinstance(old, nn.Linear) and w.dim() == 2 and w.shape[1] == old.in_features:
            replace_head(model, int(w.shape[0]))
            return int(w.shape[0])
    return None


def _owner(tensor_name: str) -> str:
    return tensor_name.rpartition(".")[0]


def load_fitting(model: nn.Module, state: dict, source: str, label: str) -> tuple[list[str], str]:
    """Load every tensor of ``state`` whose name and shape fit ``model``; the rest stays as built.

    Returns the modules whose parameters were not loaded (in model order) and a one-line note
    naming what did not fit ('' when everything did). Fitting less than half of the model is a
    ModelError: the file is for another architecture.
    """
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if len(fits) * 2 < len(own):
        raise ModelError(f"the weights in {source} fit only {len(fits)} of {len(own)} tensors of {label}; "
                         f"they are for another architecture")
    model.load_state_dict(_with_metadata(fits, state, own), strict=False)
    missed = [k for k in own if k not in fits]
    missed_params = {n for n, _ in model.named_parameters()} - set(fits)
    new_modules = []
    for name, module in model.named_modules():
        if any((f"{name}.{p}" if name else p) in missed_params for p, _ in module.named_parameters(recurse=False)):
            new_modules.append(name)
    if not missed:
        return new_modules, ""
    shown = ", ".join(missed[:4]) + (f" and {len(missed) - 4} more" if len(missed) > 4 else "")
    return new_modules, f"loaded {len(fits)} of {len(own)} tensors from {source}; {shown} did not fit"


# ----------------------------------------------------------------------------- timm


def _timm():
    try:
        import timm
    except ImportError:
        raise ModelError("timm is not installed: pip install 'freezetui[timm]'") from None
    return timm


def _timm_classifiers(model: nn.Module) -> list[str]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier")
    names = [names] if isinstance(names, str) else list(names or [])
    out = []
    for n in names:
        try:
            m = model.get_submodule(n)
        except AttributeError:
            continue
        if any(True for _ in m.parameters()):
            out.append(n)
    return out


def _build_timm(name: str, weights, num_classes: int | None, image_size: int | None):
    """Return (model, weights label, path, note, info fields) for ``timm:ARCH``."""
    timm = _timm()
    arch = name[len(TIMM_PREFIX):]
    if not arch:
        raise ModelError("--model timm: needs a timm model name, e.g. timm:resnet18")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise ModelError(f"unknown timm model {arch!r}{hint}")
    w = "none" if weights is None else str(weights)
    path, note, pretrained = None, "", False
    if w.lower() in ("auto", "pretrained"):
        if _offline():
            why = "offline (FREEZETUI_OFFLINE is set)"
        else:
            why = None
        if why is None:
            pretrained = True
        elif w.lower() == "pretrained":
            raise ModelError(f"pretrained weights for timm:{arch} are {why}; use --weights none")
        else:
            note = f"timm:{arch} pretrained weights not available {why}: using random init"
    elif w.lower() != "none":
        if Path(w).exists():
            check_weights_file(w)
        elif not Path(w).is_file():
            raise ModelError(f"timm models take --weights auto, pretrained, none or a state_dict path; "
                             f"{w!r} is none of these")
        path = w
    kwargs = {}
    if image_size is not None:
        cfg = timm.models.get_pretrained_cfg(arch)
        if cfg is not None and getattr(cfg, "fixed_input_size", False):
            kwargs["img_size"] = image_size

    def create(pre: bool) -> nn.Module:
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(10)
        try:
            return timm.create_model(arch, pretrained=pre, **kwargs)
        finally:
            socket.setdefaulttimeout(old)

    try:
        model = create(pretrained)
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001
        if not pretrained:
            raise ModelError(f"timm could not build {arch}: {_first_line(e)}") from None
        if w.lower() == "pretrained":
            raise ModelError(f"pretrained weights for timm:{arch} are not downloadable ({type(e).__name__}); "
                             f"use --weights none") from None
        note = f"timm:{arch} pretrained weights not downloadable ({type(e).__name__}): using random init"
        pretrained = False
        model = create(False)
    return model, ("pretrained" if pretrained else None), path, note


def _timm_input(model: nn.Module) -> dict:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    out: dict = {}
    if size:
        out["input_size"] = int(size[-1])
        crop = cfg.get("crop_pct") or 1.0
        out["resize_size"] = int(math.floor(out["input_size"] / crop))
    if cfg.get("mean"):
        out["mean"] = tuple(float(x) for x in cfg["mean"])
    if cfg.get("std"):
        out["std"] = tuple(float(x) for x in cfg["std"])
    out["fixed_size"] = bool(cfg.get("fixed_input_size", False))
    return out


# ----------------------------------------------------------------------------- build

FIXED_SIZE = {"maxvit_t": 224}  # architectures that fail at any other size (besides ViT)


def _torchvision_input(name: str, member, small_input: bool, vit_size: int | None) -> dict:
    out: dict = {}
    if member is not None and not small_input:
        t = member.transforms()
        out.update(input_size=int(t.crop_size[0]), resize_size=int(t.resize_size[0]),
                   mean=tuple(t.mean), std=tuple(t.std))
    if name.startswith("vit_"):
        out["fixed_size"] = True
        if vit_size is not None and out.get("input_size") != vit_size:
            resize = out.get("resize_size")
            crop = out.get("input_size")
            out["resize_size"] = round(vit_size * resize / crop) if resize and crop else None
            out["input_size"] = vit_size
    elif name in FIXED_SIZE:
        out["fixed_size"] = True
        out.setdefault("input_size", FIXED_SIZE[name])
    return out


@dataclass
class _Built:
    """What a source's builder hands on: the architecture (with any published weights loaded),
    and what the rest of :func:`build_model` needs to know about it."""

    model: nn.Module
    label: str | None = None  # the weights, as ModelInfo names them
    path: str | None = None  # a state_dict file still to load (the head sized first)
    note: str = ""
    member: object = None  # torchvision's weights enum member, when those weights were loaded
    vit_size: int | None = None  # the size a torchvision ViT was built for
    built_size: int | None = None  # the image_size the architecture was built for, recorded in the spec
    input_fields: dict = field(default_factory=dict)  # ModelInfo's input_size / fixed_size / transforms


def build_model(
    name: str,
    weights: str | None = "auto",
    num_classes: int | None = None,
    small_input: bool = False,
    *,
    allow_code: bool = True,
    image_size: int | None = None,
) -> nn.Module:
    """Build ``name`` ready for a new task: a torchvision name, ``timm:NAME``, or a factory
    ``package.module:function`` (run only with ``allow_code=True``: pass False for a name read
    from a plan file unless the user named the same factory).

    ``weights``: ``"auto"`` (DEFAULT weights when cached or downloadable, else random init with a
    note), ``"none"``/None, an enum name such as ``"IMAGENET1K_V1"``, or a state_dict path (every
    tensor whose name and shape fit is loaded; the rest stays new). ``image_size`` builds a ViT
    for that size (interpolating pretrained position embeddings).
    The returned model carries a :class:`ModelInfo` (see :func:`model_info`).
    """
    _check_build_arguments(name, num_classes, image_size, small_input)
    if is_timm(name):
        built = _from_timm(name, weights, num_classes, image_size)
    elif is_factory(name):
        built = _from_factory(name, weights, allow_code)
    else:
        built = _from_torchvision(name, weights, image_size, small_input)
    new_modules, num_classes = _fit_for_task(built, name, num_classes, small_input)
    return _with_info(built, name, num_classes, small_input, new_modules, image_size)


def _check_build_arguments(name, num_classes: int | None, image_size: int | None, small_input: bool) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ModelError("--model needs a model name")
    if num_classes is not None and num_classes < 1:
        raise ModelError(f"--num-classes must be positive, got {num_classes}")
    if image_size is not None and image_size < 1:
        raise ModelError(f"--image-size must be positive, got {image_size}")
    if small_input and not supports_small_input(name):
        raise ModelError(f"--small-input supports {SMALL_INPUT_FAMILIES}, not {name}; use --image-size instead")


def _from_timm(name: str, weights, num_classes: int | None, image_size: int | None) -> _Built:
    model, label, path, note = _build_timm(name, weights, num_classes, image_size)
    return _Built(model, label, path, note)


def _from_factory(name: str, weights, allow_code: bool) -> _Built:
    if not allow_code:
        check_factory_allowed(name, None)
    _check_factory_name(name)
    path = None
    if weights not in (None, "none", "auto"):
        path = str(weights)
        check_weights_file(path)
    return _Built(_load_factory(name), path=path)


def _from_torchvision(name: str, weights, image_size: int | None, small_input: bool) -> _Built:
    import torchvision.models as tvm

    if name not in list_models():
        raise ModelError(unknown_model_message(name))
    member, path, note, state = _resolve_weights(name, weights)
    kwargs = pretrained_kwargs(name, member)
    vit_size = built_size = None
    if name.startswith("vit_"):
        vit_size = image_size or kwargs.get("image_size") or 224
        if vit_size % _vit_patch(name):
            raise ModelError(f"{name} needs an image size divisible by its patch size {_vit_patch(name)}, "
                             f"not {vit_size}")
        kwargs["image_size"] = vit_size
        built_size = image_size
    elif name in FIXED_SIZE and image_size not in (None, FIXED_SIZE[name]):
        raise ModelError(f"{name} works only at {FIXED_SIZE[name]} px, not {image_size}")
    if name in ("googlenet", "inception_v3"):
        kwargs.setdefault("init_weights", True)  # the same init, without torchvision's warning
    model = tvm.get_model(name, weights=None, **kwargs)
    if state is not None:
        state = _modernise_keys(name, state)
        if vit_size is not None:
            state = _vit_fit_positions(name, vit_size, state)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ModelError(f"weights {member} do not fit {name}: {str(e).strip().splitlines()[0]}") from None
    drop_aux_heads(model)
    return _Built(model, member.name if member is not None else None, path, note, member, vit_size, built_size,
                  _torchvision_input(name, member, small_input, vit_size))


def _fit_for_task(built: _Built, name: str, num_classes: int | None, small_input: bool) -> tuple[list[str], int | None]:
    """The small-input stem, the new head and a weights file's tensors that fit: the modules
    made new (to be trained), and the head's size (read from the file when not given)."""
    model = built.model
    added = adapt_small_input(model, name) if small_input else []
    if built.path is None:
        return added + _replace_heads(model, name, num_classes), num_classes
    file_state = _load_state(built.path)
    if built.vit_size is not None:
        file_state = _vit_fit_positions(name, built.vit_size, file_state)
    if num_classes is None:
        num_classes = _size_heads_from_state(model, file_state)
    heads = _replace_heads(model, name, num_classes)
    new_modules, load_note = load_fitting(model, file_state, built.path, name)
    if load_note and heads and all(h in new_modules for h in heads) and num_classes is not None:
        load_note += f" (new head of {num_classes})"
    built.note = "; ".join(x for x in (built.note, load_note) if x)
    built.label = built.path
    return new_modules, num_classes


def _with_info(built: _Built, name: str, num_classes: int | None, small_input: bool, new_modules: list[str],
               image_size: int | None) -> nn.Module:
    """The model with its :class:`ModelInfo`: sizes read from the model itself where it declares them."""
    model, fields = built.model, built.input_fields
    if is_timm(name):
        fields = _timm_input(model)
        if image_size is not None and fields.get("fixed_size"):
            built.built_size = fields["input_size"] = image_size
    declared = declared_input_size(model)
    if declared is not None and not small_input:  # what the model says wins over names and configs
        fields["fixed_size"], fields["input_size"] = True, declared
    min_size = (1, 1)
    enum = None if ":" in name else _weights_enum(name)
    if enum is not None and not small_input:
        min_size = tuple(enum.DEFAULT.meta.get("min_size", (1, 1)))
    if built.vit_size is not None:
        min_size = (built.vit_size, built.vit_size)
    info = ModelInfo(name=name, weights=built.label, num_classes=num_classes, small_input=small_input,
                     new_modules=new_modules, note=built.note, min_size=min_size, weights_enum=built.member,
                     image_size=built.built_size, **fields)
    object.__setattr__(model, INFO_ATTR, info)
    return model


def declared_input_size(model: nn.Module) -> int | None:
    """The one input size ``model`` works at, read from the model itself: a torchvision ViT's
    ``image_size``, a MaxViT's first grid (a quarter of the input), a timm patch embedding with a
    strict ``img_size``, or a timm ``pretrained_cfg`` marked ``fixed_input_size``. None when the
    model declares none (it may still take any size)."""
    from torchvision.models import MaxVit, VisionTransformer

    if isinstance(model, VisionTransformer):
        return int(model.image_size)
    if isinstance(model, MaxVit) and len(model.blocks):
        return 4 * int(model.blocks[0].grid_size[0])
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    if size is not None and getattr(embed, "strict_img_size", False):
        return int(size[0] if isinstance(size, (tuple, list)) else size)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("fixed_input_size") and cfg.get("input_size"):
        return int(cfg["input_size"][-1])
    return None


SMALL_INPUT_SIZE = 32  # what a --small-input model is for (CIFAR's, MNIST's size)


def default_input_size(info: ModelInfo | None) -> int:
    """The size a model is used at when nobody says: its own (weights' crop, a fixed size), 32 px
    for a small-input stem, else 224."""
    if info is not None and info.input_size:
        return int(info.input_size)
    return SMALL_INPUT_SIZE if info is not None and info.small_input else 224


def first_batch_failure(name: str, shape: tuple, error: BaseException, model: nn.Module | None = None) -> str:
    """One sentence for a model that raised on its first batch: which model, the input shape it
    got, and the likely fix (the size the model declares, else 224 px)."""
    size = declared_input_size(model) if model is not None else None
    info = model_info(model) if model is not None else None
    size = size or (info.input_size if info is not None else None) or 224
    got = "×".join(str(int(d)) for d in shape)
    why = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:160]}" if str(error).strip() else \
        type(error).__name__
    return (f"{name} failed on its first batch of shape {got} ({why}); "
            f"it likely needs {size} px input: use --image-size {size}")


def _replace_heads(model: nn.Module, name: str, num_classes: int | None) -> list[str]:
    if num_classes is None:
        return []
    if is_timm(name):
        model.reset_classifier(num_classes)
        return _timm_classifiers(model)
    return replace_head(model, num_classes)
