"""Command line: the TUI (default), ``train`` headless, ``plan make``/``plan show``, ``models``.

Every user mistake ends as one ``freezetui: error: ...`` line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .core.errors import FreezeTUIError, PlanError

SUBCOMMANDS = ("models", "plan", "train")


class _Rule(argparse.Action):
    """``--freeze G`` and ``--unfreeze G`` share one ordered list: later rules win."""

    def __call__(self, parser, namespace, values, option_string=None):
        rules = list(getattr(namespace, "rules", None) or [])
        rules.append((self.const, values))
        namespace.rules = rules


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
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


_positive_float = _number(allow_zero=False)
_non_negative_float = _number(allow_zero=True)


def _add_model_options(p: argparse.ArgumentParser, model_default: str | None = "resnet18") -> None:
    p.add_argument("--model", default=model_default,
                   help="torchvision model name or package.module:function (default: %(default)s)")
    p.add_argument("--weights", default="auto",
                   help="auto (pretrained when available), none, an enum name like IMAGENET1K_V1, or a state_dict path")
    p.add_argument("--num-classes", type=_positive_int, help="replace the head with one of N outputs")
    p.add_argument("--small-input", action="store_true", help="adapt the stem for ~32 px images (AlexNet, ResNets)")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from .core.train import OPTIMIZERS, TrainConfig

    d = TrainConfig()
    p.add_argument("--data", default="shapes", help="shapes, cifar10, cifar100, mnist, fashion-mnist, or a folder")
    p.add_argument("--epochs", type=_positive_int, default=d.epochs)
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size)
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default: 1e-3 for Adam(W), 1e-2 for SGD, scaled to the batch size)")
    p.add_argument("--weight-decay", type=_non_negative_float, default=d.weight_decay)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    p.add_argument("--momentum", type=_non_negative_float, default=d.momentum, help="SGD momentum")
    p.add_argument("--image-size", type=_positive_int, default=None, help="resize inputs to N×N")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no random crop + flip")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast on CUDA")
    p.add_argument("--no-cache", dest="cache", action="store_false",
                   help="do not cache the frozen prefix's outputs (they are cached when that changes nothing)")
    p.add_argument("--compile", action="store_true", help="torch.compile the trainable part")


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """Two parsers: one for the subcommands, one for the TUI's own options."""
    tui = argparse.ArgumentParser(
        prog="freezetui",
        description="Choose which layers of a pretrained model train, train them, compare plans. "
                    "Subcommands: models, plan make, plan show, train (freezetui SUBCOMMAND -h).",
    )
    _add_model_options(tui)
    _add_train_options(tui)
    tui.add_argument("--plan", help="open with this freeze plan applied")
    tui.add_argument("--runs-dir", default="runs", help="where run folders go (default: %(default)s)")

    main = argparse.ArgumentParser(prog="freezetui")
    sub = main.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the model names usable with --model")

    plan = sub.add_parser("plan", help="make or show freeze plans")
    plan_sub = plan.add_subparsers(dest="plan_command", required=True)
    make = plan_sub.add_parser("make", help="write a freeze plan from --freeze/--unfreeze rules")
    _add_model_options(make, model_default=None)
    make.add_argument("--freeze", action=_Rule, const="freeze", metavar="GLOB", dest="rules",
                      help="freeze parameters or modules matching GLOB (repeatable, in order)")
    make.add_argument("--unfreeze", action=_Rule, const="unfreeze", metavar="GLOB", dest="rules",
                      help="unfreeze parameters or modules matching GLOB (repeatable, later wins)")
    make.add_argument("--bn", choices=("train", "freeze"), default="freeze",
                      help="frozen BatchNorm layers keep (freeze) or update (train) running statistics")
    make.add_argument("--image-size", type=_positive_int, help="input size, for the lints")
    make.add_argument("-o", "--output", required=True, help="plan file to write (JSON)")

    show = plan_sub.add_parser("show", help="a table of modules with frozen/trainable counts, then the lints")
    show.add_argument("plan")
    show.add_argument("--depth", type=_positive_int, default=1, help="module depth of the table")
    show.add_argument("--image-size", type=_positive_int, help="input size, for the lints")

    train = sub.add_parser("train", help="train headless with a plan and write a run folder")
    train.add_argument("--plan", help="the freeze plan (JSON)")
    _add_train_options(train)
    train.add_argument("--out", help="run folder for metrics.jsonl, summary.json, model.pt, checkpoint.pt")
    train.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR from its last checkpoint")
    return main, tui


# ----------------------------------------------------------------------------- commands


def cmd_models(args) -> int:
    from .core.models import list_models

    for name in list_models():
        print(name)
    return 0


def _print_lints(lints, stream=None) -> None:
    stream = stream or sys.stdout
    if not lints:
        print("lints: none", file=stream)
        return
    print("lints:", file=stream)
    for l in lints:
        print(f"  {l.severity.upper():7} {l.message}", file=stream)


def cmd_plan_make(args) -> int:
    if not args.model:
        raise PlanError("plan make needs --model")
    from .core.lints import check
    from .core.models import build_model, model_info
    from .core.plan import FreezePlan

    model = build_model(args.model, weights=args.weights, num_classes=args.num_classes, small_input=args.small_input)
    info = model_info(model)
    if info.note:
        print(f"note: {info.note}", file=sys.stderr)
    plan = FreezePlan.from_model(model, batchnorm=args.bn)
    for p in model.parameters():
        p.requires_grad_(True)
    plan.params = dict.fromkeys(plan.params, False)
    rules = list(args.rules or [])
    plan.apply_rules(rules)
    plan.extra["rules"] = [{"action": a, "glob": g} for a, g in rules]
    from . import __version__
    plan.extra["freezetui_version"] = __version__
    plan.apply(model)
    out = plan.save(args.output)
    c = plan.counts
    print(f"wrote {out}: {len(plan.frozen)} frozen / {len(plan.trainable)} trainable tensors, "
          f"{c['trainable']:,} of {c['total']:,} parameters trainable")
    _print_lints(check(plan, model, image_size=args.image_size, min_size=info.min_size))
    return 0


def model_for_plan(plan, weights: str | None = None, num_classes: int | None = None):
    """Build the model a plan describes and check that the plan fits it."""
    from .core.models import build_model

    spec = plan.model
    model = build_model(
        spec["name"],
        weights=weights if weights is not None else (spec.get("weights") or "none"),
        num_classes=spec.get("num_classes") or num_classes,
        small_input=bool(spec.get("small_input")),
    )
    plan.check_fits(model)
    plan.reorder_like(model)
    return model


def module_table(model, plan, depth: int = 1) -> list[tuple[str, str, int, int, int]]:
    """(module, type, params, trainable, frozen) for each module at ``depth`` that has parameters."""
    from .core.plan import module_prefixes

    rows = {}
    for name, p in model.named_parameters():
        prefixes = module_prefixes(name)
        key = prefixes[min(depth, len(prefixes)) - 1] if prefixes else name
        row = rows.setdefault(key, [0, 0, 0])
        row[0] += p.numel()
        row[1 if not plan.params[name] else 2] += p.numel()
    out = []
    for key, (total, trainable, frozen) in rows.items():
        try:
            kind = type(model.get_submodule(key)).__name__
        except AttributeError:
            kind = "Parameter"
        out.append((key, kind, total, trainable, frozen))
    return out


def cmd_plan_show(args) -> int:
    from .core.lints import check
    from .core.models import model_info
    from .core.plan import FreezePlan

    plan = FreezePlan.load(args.plan)
    model = model_for_plan(plan, weights="none")
    plan.apply(model)
    info = model_info(model)
    new = set(plan.new_modules)
    rows = module_table(model, plan, args.depth)
    width = max([len(r[0]) for r in rows] + [6])
    kind_w = max([len(r[1]) for r in rows] + [4])
    print(f"plan {args.plan}: model {plan.model['name']}, weights {plan.model.get('weights')}, "
          f"batchnorm {plan.batchnorm}")
    print(f"  {'module':<{width}}  {'type':<{kind_w}}  {'params':>12}  {'trainable':>12}  {'frozen':>12}")
    for name, kind, total, trainable, frozen in rows:
        state = "frozen" if trainable == 0 else "mixed" if frozen else ""
        mark = " (new)" if name in new or any(n.startswith(name + ".") for n in new) else ""
        print(f"  {name:<{width}}  {kind:<{kind_w}}  {total:>12,}  {trainable:>12,}  {frozen:>12,}  {state}{mark}")
    c = plan.counts
    pct = 100 * c["trainable"] / c["total"] if c["total"] else 0
    print(f"  total {c['total']:,}, trainable {c['trainable']:,} ({pct:.1f}%), frozen {c['frozen']:,}")
    _print_lints(check(plan, model, image_size=args.image_size, min_size=info.min_size))
    return 0


class ConsoleProgress:
    """Progress for a headless run: a live step line on a terminal, one line per epoch."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.last = 0.0

    def on_run_start(self, ev):
        print(f"training on {ev.device}: {ev.train_images} train / {ev.val_images} val images at "
              f"{ev.input_size} px, {ev.epochs} epoch(s) of {ev.steps_per_epoch} steps, lr {ev.lr:g}",
              file=self.stream, flush=True)
        if ev.backward_stop:
            how = "its outputs cached" if ev.feature_cache else "run without gradients"
            print(f"frozen prefix up to {ev.backward_stop}: {how}", file=self.stream, flush=True)

    def on_step(self, ev):
        now = time.monotonic()
        if self.live and now - self.last > 0.2:
            self.last = now
            print(f"\r  epoch {ev.epoch}  step {ev.global_step}/{ev.total_steps}"
                  f"  loss {ev.loss:.4f}  {ev.images_per_s:,.0f} img/s   ", end="", file=self.stream, flush=True)

    def on_epoch(self, ev):
        if self.live:
            print("\r" + " " * 70 + "\r", end="", file=self.stream)
        print(f"epoch {ev.epoch}/{ev.epochs}  train loss {ev.train_loss:.4f}  val loss {ev.val_loss:.4f}  "
              f"val acc {100 * ev.val_acc:.1f}%  {ev.images_per_s:,.0f} img/s  {ev.seconds:.1f}s",
              file=self.stream, flush=True)

    def on_run_end(self, result):
        pass


def config_from_args(args):
    from .core.train import TrainConfig

    cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        optimizer=args.optimizer, momentum=args.momentum, image_size=args.image_size, augment=args.augment,
        device=args.device, seed=args.seed, amp=args.amp, cache=args.cache, compile=args.compile,
    )
    cfg.validate()
    return cfg


def check_head(plan, data) -> None:
    nc = plan.model.get("num_classes")
    if nc is not None and nc != data.num_classes:
        raise PlanError(f"the plan's head has {nc} outputs but {data.name} has {data.num_classes} classes; "
                        f"make the plan with --num-classes {data.num_classes}")


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def cmd_train(args) -> int:
    from .core import distributed
    from .core.plan import FreezePlan
    from .core.runs import load_checkpoint
    from .core.train import TrainConfig, resolve_device

    resume = None
    if args.resume:
        resume = load_checkpoint(args.resume)
        plan = FreezePlan.from_dict(resume["plan"], source=f"the checkpoint in {args.resume}")
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        config = TrainConfig(**{k: v for k, v in resume["config"].items() if k in names})
        config.validate()
        data_spec, out = resume["extra"]["data"], Path(args.resume)
        if resume["epoch"] >= config.epochs:
            print(f"the run in {out} already finished all {config.epochs} epochs")
            return 0
    else:
        if not args.plan or not args.out:
            raise PlanError("train needs --plan PLAN and --out DIR (or --resume DIR)")
        config = config_from_args(args)
        resolve_device(config.device)  # cheap checks before any file is read
        plan = FreezePlan.load(args.plan)
        data_spec, out = args.data, Path(args.out)
    resolve_device(config.device)
    rank, world = distributed.setup(config.device)
    try:
        return _train(plan, config, data_spec, out, resume, rank, world)
    finally:
        distributed.teardown()


def _train(plan, config, data_spec, out, resume, rank: int, world: int) -> int:
    import torch

    from .core.data import load_data
    from .core.lints import check
    from .core.models import model_info
    from .core.runs import RunWriter
    from .core.split import trace
    from .core.train import output_classes, train

    if rank:  # under torchrun only rank 0 prints and writes files
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of this worker process
    data = load_data(data_spec, seed=config.seed, size=config.image_size)
    for w in data.warnings:
        print(f"warning: {w}", file=sys.stderr)
    check_head(plan, data)
    torch.manual_seed(config.seed)
    model = model_for_plan(plan, num_classes=data.num_classes)
    info = model_info(model)
    if info.note:
        print(f"note: {info.note}", file=sys.stderr)
    if plan.model.get("num_classes") is None:  # the head was sized from the data just now
        plan.model["num_classes"] = data.num_classes
        plan.model["new_modules"] = sorted(set(plan.new_modules) | set(info.new_modules))
    outputs = output_classes(model)
    if outputs is not None and outputs != data.num_classes:
        raise PlanError(f"the model's head has {outputs} outputs but {data.name} has {data.num_classes} classes; "
                        f"make the plan with --num-classes {data.num_classes}")
    traced = trace(model)
    if rank == 0:
        _print_lints(check(plan, model, image_size=config.image_size or data.image_size, min_size=info.min_size,
                           order=traced.param_order if traced else None), stream=sys.stderr)

    # Ctrl-C, kill and a dropped SSH session all end the run the same way: after this batch,
    # with the files written and a line saying how to resume.
    stop = threading.Event()
    caught: list[int] = []

    def on_signal(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        caught.append(signum)
        print(f"\n{signal.Signals(signum).name}: stopping after this batch (again to abort)", file=sys.stderr,
              flush=True)
        stop.set()

    previous = {name: signal.signal(getattr(signal, name), on_signal) for name in STOP_SIGNALS if hasattr(signal, name)}
    try:
        callbacks = []
        if rank == 0:
            callbacks = [ConsoleProgress(), RunWriter(out, model, plan, config,
                                                      extra={"data": data_spec, "model": plan.model["name"],
                                                             "world_size": world},
                                                      resume_epoch=resume["epoch"] if resume else None)]
        result = train(model, plan, data, config, callbacks=callbacks, stop=stop, resume=resume)
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)
    frozen = "unchanged" if result.frozen_unchanged else f"CHANGED: {', '.join(result.changed[:5])}"
    acc = f"{100 * result.val_acc:.1f}%" if result.val_acc is not None else "n/a"
    print(f"done: val acc {acc} (best {100 * (result.best_val_acc or 0):.1f}%), "
          f"{result.train_images_per_s:,.0f} img/s, frozen parameters {frozen}; wrote {out}/")
    if result.stopped:
        done = max((e.epoch for e in result.history if not e.partial), default=0)
        print(f"stopped: {done} of {config.epochs} epoch(s) complete; continue with "
              f"`freezetui train --resume {out}`", file=sys.stderr)
        return 128 + (caught[0] if caught else signal.SIGINT)
    return 0 if result.frozen_unchanged else 1


def cmd_tui(args) -> int:
    try:
        from .tui.app import run_app
    except ImportError as e:
        if "textual" in str(e).lower():
            print("freezetui: error: the TUI needs Textual (pip install freezetui[tui] or textual textual-plotext); "
                  "headless commands still work", file=sys.stderr)
            return 2
        raise
    return run_app(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    main_parser, tui_parser = build_parser()
    try:
        if argv and argv[0] in SUBCOMMANDS:
            args = main_parser.parse_args(argv)
            if args.command == "models":
                return cmd_models(args)
            if args.command == "plan":
                return cmd_plan_make(args) if args.plan_command == "make" else cmd_plan_show(args)
            return cmd_train(args)
        return cmd_tui(tui_parser.parse_args(argv))
    except FreezeTUIError as e:
        print(f"freezetui: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("freezetui: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `freezetui models | head`
        sys.stderr.close()
        return 0
