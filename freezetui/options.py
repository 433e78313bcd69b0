"""Command-line options: the argparse parsers, and the plain specs they turn into.

The CLI parses with these and dispatches; the TUI builds its options from the same specs.
Neither the core nor the TUI imports ``freezetui.cli``.
"""

from __future__ import annotations

import argparse

from .core.schedule import SCHEDULES
from .core.specs import ModelSpec, ScheduleSpec
from .core.config import OPTIMIZERS, TrainConfig

SUBCOMMANDS = ("models", "plan", "train", "sweep", "suggest", "cache")
# `train --resume DIR` continues a run with its own settings; only these may change.
RESUME_OVERRIDES = ("device", "epochs")


class _Rule(argparse.Action):
    """``--freeze G`` and ``--unfreeze G`` share one ordered list: later rules win."""

    def __call__(self, parser, namespace, values, option_string=None):
        rules = list(getattr(namespace, "rules", None) or [])
        rules.append((self.const, values))
        namespace.rules = rules


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def seed_int(text: str) -> int:
    """A seed torch accepts: 0 … 2**64 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2**64 - 1, got {value}")
    return value


def _number(allow_zero: bool):
    """An argparse type for a finite float that is positive (or, with ``allow_zero``, not negative)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        ok = value >= 0 if allow_zero else value > 0
        if not ok or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be {'zero or ' if allow_zero else ''}positive, got {text}")
        return value

    return parse


positive_float = _number(allow_zero=False)
non_negative_float = _number(allow_zero=True)


def add_model_options(p: argparse.ArgumentParser, model_default: str | None = "resnet18") -> None:
    p.add_argument("--model", default=model_default,
                   help="torchvision model name or package.module:function (default: %(default)s)")
    p.add_argument("--weights", default="auto",
                   help="auto (pretrained when available), none, an enum name like IMAGENET1K_V1, or a state_dict path")
    p.add_argument("--num-classes", type=positive_int, help="replace the head with one of N outputs")
    p.add_argument("--small-input", action="store_true", help="adapt the stem for ~32 px images (AlexNet, ResNets)")


def add_rule_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--freeze", action=_Rule, const="freeze", metavar="GLOB", dest="rules",
                   help="freeze parameters or modules matching GLOB (repeatable, in order)")
    p.add_argument("--unfreeze", action=_Rule, const="unfreeze", metavar="GLOB", dest="rules",
                   help="unfreeze parameters or modules matching GLOB (repeatable, later wins)")
    p.add_argument("--bias-only", action=_Rule, const="bias-only", metavar="GLOB", dest="rules",
                   help="inside GLOB only the biases train (BitFit); in order with --freeze/--unfreeze")
    p.add_argument("--norm-only", action=_Rule, const="norm-only", metavar="GLOB", dest="rules",
                   help="inside GLOB only the norm layers' scales and shifts train; in order with the others")
    p.add_argument("--lora", action=_Rule, const="lora", metavar="GLOB[=R[:ALPHA]]", dest="rules",
                   help="a LoRA adapter of rank R (8) and alpha ALPHA (2·R) on each Linear, Conv2d and "
                        "attention in GLOB; their weights frozen (repeatable, later wins)")
    p.add_argument("--bn", choices=("train", "freeze"), default="freeze",
                   help="frozen BatchNorm layers keep (freeze) or update (train) running statistics")


def stage_arg(text: str) -> tuple[int, list[str]]:
    """``EPOCH:GLOB[,GLOB…]``: unfreeze those globs at the start of that epoch."""
    epoch, sep, globs = text.partition(":")
    try:
        n = int(epoch)
    except ValueError:
        n = 0
    names = [g for g in globs.split(",") if g]
    if not sep or n < 2 or not names:
        raise argparse.ArgumentTypeError(f"{text!r} is not EPOCH:GLOB[,GLOB...] with EPOCH from 2 on")
    return n, names


def lr_mult_arg(text: str) -> tuple[str, float]:
    """``GLOB=F``: parameters matching GLOB train at F × the base rate."""
    glob, sep, value = text.rpartition("=")
    try:
        f = float(value)
    except ValueError:
        f = -1.0
    if not sep or not glob or not (0 < f < float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not GLOB=F with F a positive number")
    return glob, f


def decay_arg(text: str) -> float:
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def add_schedule_plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage", type=stage_arg, action="append", default=[], metavar="EPOCH:GLOB[,GLOB...]",
                   help="unfreeze GLOBs at the start of EPOCH (repeatable, in epoch order)")
    p.add_argument("--lr-mult", type=lr_mult_arg, action="append", default=[], metavar="GLOB=F",
                   help="parameters matching GLOB train at F × the rate (repeatable, later wins)")
    p.add_argument("--layer-decay", type=decay_arg, metavar="F",
                   help="rates F, F², … over the blocks before the head (instead of --lr-mult)")
    p.add_argument("--train-bn", action="store_true",
                   help="norm layers' parameters train even where frozen, BatchNorm in train mode (fastai's train_bn)")
    p.add_argument("--auto-rgn", action="store_true",
                   help="Auto-RGN: every step, each trainable tensor's rate × its relative gradient norm "
                        "‖g‖/‖w‖ over the largest (Lee et al., ICLR 2023)")
    p.add_argument("--recipe", choices=("fine-tune",),
                   help="fine-tune: the head (and, train_bn, the norm layers) alone for 1 epoch, then everything "
                        "at half the rate spread 100x over fastai's parameter groups, the schedule restarted "
                        "(fastai's fine_tune; the one-cycle's pct_start/div are freezetui's, not fastai's "
                        "0.99/25 then 0.3/5)")


def add_train_options(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--data", default="shapes", help="shapes, cifar10, cifar100, mnist, fashion-mnist, or a folder")
    p.add_argument("--epochs", type=positive_int, default=d.epochs)
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    p.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate (default: 1e-3 for Adam(W), 1e-2 for SGD, scaled to the batch size)")
    p.add_argument("--weight-decay", type=non_negative_float, default=d.weight_decay)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    p.add_argument("--momentum", type=non_negative_float, default=d.momentum, help="SGD momentum")
    p.add_argument("--image-size", type=positive_int, default=None, help="resize inputs to N×N")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no random crop + flip")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast on CUDA")
    p.add_argument("--no-cache", dest="cache", action="store_false",
                   help="do not cache the frozen prefix's outputs (they are cached when that changes nothing)")
    p.add_argument("--compile", action="store_true", help="torch.compile the trainable part")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms (cuDNN, cuBLAS), no autotuning: a resumed CUDA run matches an "
                        "uninterrupted one; operations without a deterministic version are named at the end")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory layout on CUDA (convolutional models)")
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule,
                   help="learning-rate schedule over the run (default: %(default)s)")
    p.add_argument("--warmup-epochs", type=non_negative_float, default=d.warmup_epochs,
                   help="linear warmup at the start, in epochs (default: %(default)s; onecycle has its own)")
    p.add_argument("--decay-all", action="store_true", help="weight decay on biases and norm layers too (never on what the model's own no_weight_decay() names)")


def build_parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """Two parsers: one for the subcommands, one for the TUI's own options."""
    tui = argparse.ArgumentParser(
        prog="freezetui",
        description="Choose which layers of a pretrained model train, train them, compare plans. "
                    "Subcommands: models, plan make, plan show, train, sweep, suggest, cache (freezetui SUBCOMMAND -h).",
    )
    add_model_options(tui)
    add_train_options(tui)
    tui.add_argument("--plan", help="open with this freeze plan applied")
    tui.add_argument("--runs-dir", default="runs", help="where run folders go (default: %(default)s)")
    tui.add_argument("--keep-only-model", action="store_true",
                     help="after a run finishes, delete its checkpoint.pt and keep model.pt (saves disk)")

    main = argparse.ArgumentParser(prog="freezetui")
    sub = main.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the model names usable with --model")

    plan = sub.add_parser("plan", help="make or show freeze plans")
    plan_sub = plan.add_subparsers(dest="plan_command", required=True)
    make = plan_sub.add_parser("make", help="write a freeze plan from --freeze/--unfreeze rules")
    add_model_options(make, model_default=None)
    add_rule_options(make)
    add_schedule_plan_options(make)
    make.add_argument("--image-size", type=positive_int, help="input size, for the lints")
    make.add_argument("-o", "--output", required=True, help="plan file to write (JSON)")

    show = plan_sub.add_parser("show", help="a table of modules with frozen/trainable counts, then the lints")
    show.add_argument("plan")
    show.add_argument("--model", help="allow a plan naming this package.module:function factory to run it")
    show.add_argument("--depth", type=positive_int, default=1, help="module depth of the table")
    show.add_argument("--image-size", type=positive_int, help="input size, for the lints and the cost estimate")
    show.add_argument("--batch-size", type=positive_int, default=TrainConfig().batch_size,
                      help="batch size of the cost estimate (default: %(default)s)")
    show.add_argument("--optimizer", choices=OPTIMIZERS, default=TrainConfig().optimizer,
                      help="optimizer of the cost estimate (default: %(default)s)")
    show.add_argument("--json", action="store_true", help="print counts, the cost estimate, every parameter (trainable, epoch, lr_mult, "
                           "weight_decay) and the lints as JSON")

    train = sub.add_parser("train", help="train headless with a plan (or --model and rules) and write a run folder")
    train.add_argument("--plan", help="the freeze plan (JSON)")
    add_model_options(train, model_default=None)
    add_rule_options(train)
    add_schedule_plan_options(train)  # without --plan: as plan make would write them
    add_train_options(train)
    train.add_argument("--out", help="run folder for metrics.jsonl, summary.json, model.pt, checkpoint.pt")
    train.add_argument("--force", action="store_true", help="write into --out even if it holds files")
    train.add_argument("--resume", metavar="DIR",
                       help="continue the run in DIR from its last checkpoint (--epochs extends it, --device moves it)")
    sweep = sub.add_parser("sweep", help="train a ladder of plans (head only, +last stage, ..., all) and compare")
    add_model_options(sweep, model_default=None)
    sweep.add_argument("--bn", choices=("train", "freeze"), default="freeze",
                       help="frozen BatchNorm layers keep (freeze) or update (train) running statistics")
    add_train_options(sweep)
    sweep.add_argument("--rungs", type=positive_int, help="at most N rungs: the first N-1 and the all-trainable one")
    sweep.add_argument("--out", required=True, help="sweep folder: sweep.json and one run folder per rung")
    sweep.add_argument("--force", action="store_true", help="write into --out even if it holds other files")
    add_suggest_parser(sub)

    cache = sub.add_parser("cache", help="the decoded copies of image folders (under $FREEZETUI_DATA or "
                                         "~/.cache/freezetui): list them or clear them")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    cache_sub.add_parser("list", help="each decoded folder: its size on disk, images, side, age")
    clear = cache_sub.add_parser("clear", help="remove every decoded folder, or FOLDER's")
    clear.add_argument("folder", nargs="?", help="the image folder whose decoded copies go (default: all)")
    return main, tui


def unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def add_suggest_parser(sub) -> None:
    from .core.suggest import DEFAULT_BATCHES, DEFAULT_THRESHOLD

    p = sub.add_parser("suggest", help="measure which blocks the data pulls on (relative gradient norms) "
                                       "and suggest a plan")
    add_model_options(p, model_default=None)
    p.add_argument("--bn", choices=("train", "freeze"), default="freeze",
                   help="the suggested plan's frozen BatchNorm layers keep (freeze) or update (train) statistics")
    add_train_options(p)
    p.add_argument("--batches", type=positive_int, default=DEFAULT_BATCHES,
                   help="batches of forward and backward to measure on (default: %(default)s)")
    p.add_argument("--threshold", type=unit_float, default=DEFAULT_THRESHOLD,
                   help="a block joins the suggestion when its signal is at least this share of the strongest "
                        "block's, contiguously (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the blocks, the tensors and the plan as JSON")
    p.add_argument("-o", "--output", help="write the suggested plan here (JSON)")


def config_from_args(args) -> TrainConfig:
    cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        optimizer=args.optimizer, momentum=args.momentum, image_size=args.image_size, augment=args.augment,
        device=args.device, seed=args.seed, amp=args.amp, cache=args.cache, compile=args.compile,
        deterministic=args.deterministic, channels_last=args.channels_last, schedule=args.schedule,
        warmup_epochs=args.warmup_epochs, decay_all=args.decay_all,
    )
    cfg.validate()
    return cfg


def model_spec_from_args(args) -> ModelSpec | None:
    if not getattr(args, "model", None):
        return None
    return ModelSpec(args.model, args.weights, args.num_classes, args.small_input)


SCHEDULE_FLAGS = ("stage", "lr_mult", "layer_decay", "recipe", "train_bn", "auto_rgn")


def schedule_spec_from_args(args) -> ScheduleSpec | None:
    """``--stage``, ``--lr-mult``, ``--layer-decay``, ``--recipe`` and ``--auto-rgn``; None when none is given."""
    if not any(getattr(args, k, None) for k in SCHEDULE_FLAGS):
        return None
    return ScheduleSpec(stages=list(args.stage or []), lr_mult=list(args.lr_mult or []),
                        layer_decay=args.layer_decay, recipe=args.recipe, train_bn=args.train_bn,
                        auto_rgn=bool(args.auto_rgn))


def given_schedule_flags(args) -> list[str]:
    """The schedule flags given, as the user typed them (``--lr-mult``)."""
    return ["--" + k.replace("_", "-") for k in SCHEDULE_FLAGS if getattr(args, k, None)]


def given_options(parser: argparse.ArgumentParser, args, command: list[str]) -> list[str]:
    """The options of ``command`` the user set to something other than their defaults."""
    defaults = vars(parser.parse_args(command))
    return [k for k, v in vars(args).items() if k in defaults and v != defaults[k]]
