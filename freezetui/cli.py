"""Command line: the TUI (default), ``train`` headless, ``plan make``/``plan show``, ``models``.

This module parses (with :mod:`freezetui.options`), dispatches and prints; runs are carried
out by :func:`freezetui.core.runner.execute`. Every user mistake ends as one
``freezetui: error: ...`` line and a non-zero exit.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

from .core.errors import FreezeTUIError, PlanError, Stopped
from .options import (RESUME_OVERRIDES, SUBCOMMANDS, build_parsers, config_from_args, given_options,
                      given_schedule_flags, model_spec_from_args, schedule_spec_from_args)


def cmd_models(args) -> int:
    from .core.models import list_models

    for name in list_models():
        print(name)
    return 0


def lint_advice(fix) -> str:
    """A lint's fix (data from the core) as the command line's flags."""
    kind, value = fix
    if kind == "unfreeze":
        return f"unfreeze it with --unfreeze '{value}'"
    if kind == "batchnorm":
        return f"use --bn {value}"
    if kind == "image_size":
        return f"use --image-size {value}"
    if kind == "image_size_or_small_input":
        return f"use --image-size {value} or larger, or --small-input"
    if kind == "small_input":
        return "use --small-input"
    return ""


def lint_text(lint) -> str:
    """``message; advice``, the advice as flags (the severity is the caller's to show)."""
    advice = lint_advice(lint.fix) if lint.fix is not None else ""
    return lint.message + (f"; {advice}" if advice else "")


def print_lints(lints, stream=None) -> None:
    stream = stream or sys.stdout
    if not lints:
        print("lints: none", file=stream)
        return
    print("lints:", file=stream)
    for l in lints:
        print(f"  {l.severity.upper():7} {lint_text(l)}", file=stream)


def cmd_plan_make(args) -> int:
    if not args.model:
        raise PlanError("plan make needs --model")
    if Path(args.output).is_dir():
        raise PlanError(f"-o {args.output} is a folder; give the plan's file name, e.g. {Path(args.output) / 'plan.json'}")
    from .core.lints import check
    from .core.models import build_model, model_info
    from .core.runner import plan_from_rules

    model = build_model(args.model, weights=args.weights, num_classes=args.num_classes, small_input=args.small_input,
                        image_size=args.image_size)
    info = model_info(model)
    if info.note:
        print(f"note: {info.note}", file=sys.stderr)
    plan = plan_from_rules(model, args.rules, args.bn, schedule_spec_from_args(args))
    plan.apply(model)
    out = plan.save(args.output)
    c = plan.counts
    print(f"wrote {out}: {len(plan.frozen)} frozen / {len(plan.trainable)} trainable tensors, "
          f"{c['trainable']:,} of {c['total']:,} parameters trainable"
          + (f", {c['adapters']:,} in LoRA adapters on {len(plan.adapted)} modules" if plan.adapters else ""))
    for line in describe_schedule(plan):
        print(f"  {line}")
    print_lints(check(plan, model, image_size=args.image_size or info.input_size))
    return 0


def describe_schedule(plan) -> list[str]:
    from .core.schedule import describe

    return describe(plan)


def module_starts(plan, depth: int = 1) -> dict[str, str]:
    """The epoch each module at ``depth`` starts training ("2", "1–3" when mixed, "never")."""
    from .core.plan import module_prefixes

    spans: dict[str, list] = {}
    for name in plan.params:
        prefixes = module_prefixes(name)
        key = prefixes[min(depth, len(prefixes)) - 1] if prefixes else name
        spans.setdefault(key, []).append(plan.stage_of(name))
    out = {}
    for key, v in spans.items():
        known = [e for e in v if e is not None]
        if not known:
            out[key] = "never"
        elif min(known) == max(known) and len(known) == len(v):
            out[key] = f"epoch {known[0]}"
        else:
            out[key] = f"epoch {min(known)}–{max(known)}" + ("+" if len(known) < len(v) else "")
    return out


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
    from .core.models import default_input_size, first_batch_failure, model_info
    from .core.plan import FreezePlan
    from .core.runner import model_for_plan

    from .core.cost import PROFILE_BATCHES, describe, estimate, human_bytes, human_flops, stored_profile
    from .core.schedule import OWN_LOOP, module_rates, parameter_rows
    from .core.split import frozen_prefix, trace
    from .core.adapters import adapter_numel_under, module_modes, subtree_mode

    plan = FreezePlan.load(args.plan)
    model = model_for_plan(plan, weights="none", allowed_code=args.model)
    plan.apply(model)
    info = model_info(model)
    traced = trace(model)
    prefix = frozen_prefix(traced, plan.prefix_frozen(), [n for n, _ in model.named_parameters()])
    size = args.image_size or default_input_size(info)  # the plan's own size: 32 px for a small-input plan
    key = {k: v for k, v in plan.model.items() if k != "weights"}  # the weights do not change the cost
    lints = check(plan, model, image_size=size)
    modes = module_modes(plan, sorted({n.rsplit('.', 1)[0] for n in plan.params if '.' in n}))

    def cost() -> tuple[dict | None, str | None]:
        """(the estimate, None), or (None, why) when the model cannot be priced at this size; a
        profile stored for this model and size is reused."""
        if sys.stderr.isatty():
            print("(measuring cost…)", end="\r", file=sys.stderr, flush=True)
        try:
            return estimate(stored_profile(model, size, key), plan, args.batch_size, args.optimizer,
                            prefix=prefix), None
        except Exception as e:  # noqa: BLE001 - the price is one part of the answer; the rest still shows
            return None, first_batch_failure(plan.model["name"], (PROFILE_BATCHES[0], 3, size, size), e, model)
        finally:
            if sys.stderr.isatty():
                print(" " * 17, end="\r", file=sys.stderr, flush=True)

    if args.json:
        est, failure = cost()
        import dataclasses
        import json

        print(json.dumps({"counts": plan.counts, "image_size": size,
                          "frozen_prefix": dataclasses.asdict(prefix) if prefix else None,
                          "estimate": est, "estimate_note": failure,
                          "parameters": parameter_rows(plan, model, traced.param_order if traced else None),
                          "lints": [lint.to_dict() for lint in lints], "modes": modes,
                          "adapters": [r.to_dict() for r in plan.adapters]}, indent=2))
        return 0
    new = set(plan.new_modules)
    rows = module_table(model, plan, args.depth)
    scheduled = bool(plan.stages or plan.lr_mult or plan.layer_decay is not None or plan.auto_rgn)
    rates, starts = {}, {}
    if scheduled:
        rates = module_rates(plan, model, args.depth, traced.param_order if traced else None)
        starts = module_starts(plan, args.depth)
    width = max([len(r[0]) for r in rows] + [6])
    kind_w = max([len(r[1]) for r in rows] + [4])
    print(f"plan {args.plan}: model {plan.model['name']}, weights {plan.model.get('weights') or 'random init'}, "
          f"batchnorm {plan.batchnorm}")
    extra_head = f"  {'lr ×':>13}  {'trains from':>11}" if scheduled else ""
    lora_head = f"  {'adapters':>10}" if plan.adapters else ""
    print(f"  {'module':<{width}}  {'type':<{kind_w}}  {'params':>12}  {'trainable':>12}  {'frozen':>12}{lora_head}"
          f"{extra_head}  mode")
    for name, kind, total, trainable, frozen in rows:
        state = subtree_mode(plan, name)
        mark = " (new)" if name in new or any(n.startswith(name + ".") for n in new) else ""
        sched = (f"  {adapter_numel_under(model, name):>10,}" if plan.adapters else "") + (
            f"  {rates.get(name, ''):>13}  {starts.get(name, ''):>11}" if scheduled else "")
        if scheduled and plan.auto_rgn and trainable:  # the multiplier, then × the tensor's signal each step
            sched = (f"  {adapter_numel_under(model, name):>10,}" if plan.adapters else "") + \
                f"  {(rates.get(name, '') + '·rgn'):>13}  {starts.get(name, ''):>11}"
        print(f"  {name:<{width}}  {kind:<{kind_w}}  {total:>12,}  {trainable:>12,}  {frozen:>12,}{sched}  "
              f"{state}{mark}".rstrip())
    c = plan.counts
    pct = 100 * c["trainable"] / c["total"] if c["total"] else 0
    print(f"  total {c['total']:,}, trainable {c['trainable']:,} ({pct:.1f}%), frozen {c['frozen']:,}")
    if plan.adapters:
        rules = ", ".join(f"{r.modules} (r {r.r}, alpha {r.alpha:g})" for r in plan.adapters)
        print(f"  LoRA adapters: {c.get('adapters', 0):,} parameters trained beside them, on {len(plan.adapted)} "
              f"modules: {rules}")
    for line in describe_schedule(plan):
        print(f"  {line}")
    print(OWN_LOOP)
    sys.stdout.flush()  # the table first: the cost is measured after it (once per model and size)
    est, failure = cost()
    if est is None:
        print(f"note: no cost estimate at {size} px: {failure}")
    else:
        print(f"cost at batch {args.batch_size}, {size} px, {args.optimizer}: {describe(est)}")
        print(f"  weights {human_bytes(est['param_bytes'])}, gradients {human_bytes(est['grad_bytes'])}, "
              f"optimizer state {human_bytes(est['optimizer_bytes'])}, activations "
              f"{human_bytes(est['activation_bytes'])} (full fine-tuning: {human_bytes(est['full_activation_bytes'])})")
        print(f"  {human_flops(est['flops_per_image'])} per image (forward "
              f"{human_flops(est['forward_flops_per_image'])}), full fine-tuning {human_flops(est['full_flops_per_image'])}")
    print_lints(lints)
    return 0


class ConsoleProgress:
    """Progress for a headless run: on a terminal a Rich bar per epoch (steps, elapsed, ETA,
    img/s, loss) above which each epoch's line is printed; elsewhere (logs, CI) the lines only."""

    def __init__(self, stream=None):
        import importlib.util

        self.stream = stream or sys.stderr
        # a bar on a terminal, where Rich is there (a GPU box may have torch and not Textual's Rich)
        self.live = self.stream.isatty() and importlib.util.find_spec("rich") is not None
        self.bar = None  # a Rich progress display, on a terminal only
        self.task, self.task_name = None, ""
        self.epochs, self.steps = 0, 0

    def _bar(self):
        """Rich's progress for this run: steps of the epoch, elapsed, ETA, img/s and loss."""
        if self.bar is None:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                TextColumn("{task.fields[rate]}"), console=Console(file=self.stream),
                                transient=True)
            self.bar.start()
        return self.bar

    def _say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.stream, flush=True)

    def on_run_start(self, ev):
        self.epochs, self.steps = ev.epochs, ev.steps_per_epoch
        self._say(f"training on {ev.device} ({ev.precision}): {ev.train_images} train / {ev.val_images} val images "
                  f"at {ev.input_size} px, {_n(ev.epochs, 'epoch')} of {_n(ev.steps_per_epoch, 'step')}, "
                  f"lr {ev.lr:g}")
        for line in ev.notes:
            self._say(f"note: {line}")
        if ev.prefix:
            how = f"features cached after {ev.cached_at}" if ev.cached_at else "the frozen layers run without gradients"
            self._say(f"{ev.prefix.sentence()}; {how}")
        for line in ev.schedule:
            self._say(f"schedule: {line}")

    def _task(self, description: str, total: int):
        bar = self._bar()
        if self.task is not None and self.task_name != description:
            bar.remove_task(self.task)
            self.task = None
        if self.task is None:
            self.task, self.task_name = bar.add_task(description, total=total, rate=""), description
        return bar

    def on_caching(self, done, total):
        if self.live:
            self._task("caching features", total).update(self.task, completed=done, rate="")
        elif done >= total:
            self._say(f"cached the frozen layers' outputs for {_n(total, 'image')}")

    def on_step(self, ev):
        if self.live:  # plain lines otherwise (logs, CI): one per epoch
            self._task(f"epoch {ev.epoch}/{self.epochs}", self.steps).update(
                self.task, completed=ev.step, rate=f"{ev.images_per_s:,.0f} img/s · loss {ev.loss:.4f}")

    def on_epoch(self, ev):
        self._say(f"epoch {ev.epoch}/{ev.epochs}  train loss {ev.train_loss:.4f}  val loss {ev.val_loss:.4f}  "
                  f"val acc {100 * ev.val_acc:.1f}%  {ev.images_per_s:,.0f} img/s  {ev.seconds:.1f}s  "
                  f"stage {ev.stage}  {ev.trainable:,} trainable  lr {ev.lr:.3g}")

    def on_run_end(self, result):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        if result.nondeterministic:
            self._say(f"note: --deterministic: no deterministic version on {result.device} of "
                      f"{', '.join(result.nondeterministic)}; a resumed run may differ in the last bits")


def one_line(text: str) -> str:
    """``text`` on one line: a newline or other control character (in a file name, say) shown
    escaped, so one message stays one line of a log."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


class ConsoleReporter:
    """The runner's notes, warnings, lints and decoding progress, on stderr."""

    def __init__(self):
        self.last = 0.0
        self.live = sys.stderr.isatty()

    def progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < 0.5:
            return
        self.last = now
        line = f"decoding images: {done:,}/{total:,}"
        if self.live:
            print("\r" + line, end="\n" if done >= total else "", file=sys.stderr, flush=True)
        elif done >= total or done == 0:
            print(line, file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        print(f"note: {one_line(text)}", file=sys.stderr)

    def warning(self, text: str) -> None:
        print(f"warning: {one_line(text)}", file=sys.stderr)

    def lints(self, lints) -> None:
        print_lints(lints, stream=sys.stderr)


def train_spec(args, parser):
    """The run ``freezetui train`` asked for: a resumed one, from a plan file, or from rules."""
    from .core.plan import FreezePlan
    from .core.runner import resume_spec
    from .core.specs import RunSpec

    if args.resume:
        extra = [o for o in given_options(parser, args, ["train"]) if o not in (*RESUME_OVERRIDES, "resume")]
        if extra:
            flags = ", ".join("--" + o.replace("_", "-") for o in extra)
            raise PlanError(f"--resume continues a run with its own settings; only --epochs and --device may "
                            f"change ({flags} given)")
        given = set(given_options(parser, args, ["train"]))
        return resume_spec(args.resume, epochs=args.epochs if "epochs" in given else None,
                           device=args.device if "device" in given else None)
    if not args.out or not (args.plan or args.model):
        raise PlanError("train needs --out DIR and either --plan PLAN or --model NAME (or --resume DIR)")
    config = config_from_args(args)
    from .core.devices import resolve_device

    resolve_device(config.device)  # cheap checks before any file is read
    if args.plan and (flags := given_schedule_flags(args)):
        raise PlanError(f"{', '.join(flags)} shape a plan made from --model and rules; the plan file "
                        f"{args.plan} holds its own schedule (write another with `freezetui plan make`)")
    plan = FreezePlan.load(args.plan) if args.plan else None
    if plan is not None and args.rules:
        raise PlanError("give either --plan or --freeze/--unfreeze rules, not both")
    return RunSpec(data=args.data, config=config, out=Path(args.out), plan=plan, model=model_spec_from_args(args),
                   rules=list(args.rules or []), batchnorm=args.bn, force=args.force,
                   schedule=schedule_spec_from_args(args))


def _n(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def cmd_train(args, parser) -> int:
    from .core import distributed
    from .core.runner import execute, finished_message, stop_on_signals

    spec = train_spec(args, parser)
    if spec.resume is not None and spec.resume["epoch"] >= spec.config.epochs:
        print(f"the run in {spec.out} already finished all {spec.config.epochs} epochs "
              f"(--epochs N continues it to N)")
        return 0
    stop = threading.Event()
    with stop_on_signals(stop) as caught:
        callbacks = [ConsoleProgress()] if distributed.rank_from_env() == 0 else []
        try:
            result = execute(spec, callbacks=callbacks, stop=stop, reporter=ConsoleReporter())
        except Stopped as e:
            print(f"freezetui: {e}", file=sys.stderr)
            return 128 + (caught[0] if caught else signal.SIGINT)
    if result.stopped:  # "stopped" only, not "done" first
        done = max((e.epoch for e in result.history if not e.partial), default=0)
        then = (f"continue with `freezetui train --resume {spec.out}`" if (spec.out / "checkpoint.pt").is_file()
                else "no checkpoint was written, so there is nothing to resume")
        print(f"stopped: {done} of {_n(spec.config.epochs, 'epoch')} complete; {then}", file=sys.stderr)
        return 128 + (caught[0] if caught else signal.SIGINT)
    print(finished_message(result, spec.out))
    return 0 if result.frozen_unchanged else 1


def cmd_sweep(args) -> int:
    from .core import distributed
    from .core.runner import stop_on_signals
    from .core.sweep import format_table, run_sweep

    if not args.model:
        raise PlanError("sweep needs --model NAME")
    config = config_from_args(args)
    from .core.devices import resolve_device

    resolve_device(config.device)
    stop = threading.Event()
    rank0 = distributed.rank_from_env() == 0
    with stop_on_signals(stop) as caught:
        rows = run_sweep(model_spec_from_args(args), args.data, config, Path(args.out), rungs=args.rungs,
                         batchnorm=args.bn, callbacks_factory=lambda i, name: [ConsoleProgress()] if rank0 else [],
                         stop=stop, reporter=ConsoleReporter(), force=args.force)
    if rank0:
        print(format_table(rows))
        print(f"wrote {Path(args.out) / 'sweep.json'}")
    if (rows and rows[-1]["stopped"]) or stop.is_set():  # stopped in a rung or between two
        if rank0:
            print("stopped: continue the sweep with the same command", file=sys.stderr)
        return 128 + (caught[0] if caught else signal.SIGINT)
    return 0


def cmd_suggest(args) -> int:
    from .core.specs import RunSpec
    from .core.suggest import suggest_from_spec

    if not args.model:
        raise PlanError("suggest needs --model NAME")
    if args.output and Path(args.output).is_dir():
        raise PlanError(f"-o {args.output} is a folder; give the plan's file name, e.g. {Path(args.output) / 'plan.json'}")
    spec = RunSpec(data=args.data, config=config_from_args(args), out=None, model=model_spec_from_args(args),
                   batchnorm=args.bn)
    report = suggest_from_spec(spec, args.batches, args.threshold, ConsoleReporter())
    if args.output:
        report.plan.save(args.output)
    if args.json:
        import json

        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(suggest_text(report))
    if args.output:
        print(f"wrote {args.output}", file=sys.stderr if args.json else sys.stdout)
    return 0


def suggest_text(report) -> str:
    """The measurement as printed: the blocks with a bar each, the head, the suggestion."""
    s = report.signal
    width = max([len(b.name) for b in s.blocks] + [4])
    lines = [f"{s.model}: relative gradient norm ‖g‖/‖w‖ over {s.batches} batch(es) of {s.batch_size} "
             f"in {s.seconds:.1f}s, normalised to the strongest block",
             f"  {'block':<{width}}  {'params':>11}  {'‖g‖/‖w‖':>9}  signal"]
    chosen = set(report.blocks)
    for b in s.blocks:
        bar = "█" * round(20 * (b.signal or 0.0))
        rgn = "n/a" if b.rgn is None else f"{b.rgn:.3g}"
        lines.append(f"  {b.name:<{width}}  {b.params:>11,}  {rgn:>9}  {b.signal or 0.0:5.2f} {bar:<20}"
                     f"{'  ← suggested' if b.name in chosen else ''}")
    h = s.head
    share = "(re-initialised; always trains)" if h.signal is None else \
        f"{h.signal:5.2f} {'█' * round(20 * h.signal):<20}  (always trains)"
    lines.append(f"  {'head':<{width}}  {h.params:>11,}  {'n/a' if h.rgn is None else f'{h.rgn:.3g}':>9}  {share}")
    c = report.plan.counts
    lines.append(f"suggested: the head + {', '.join(report.blocks) or 'nothing else'} (blocks with signal ≥ "
                 f"{report.threshold:g}, contiguous around the strongest): {c['trainable']:,} of {c['total']:,} "
                 f"parameters trainable")
    return "\n".join(lines)


def cmd_cache(args) -> int:
    from .core.cost import human_bytes
    from .core.data import default_cache_dir
    from .core.imagecache import cache_entries, clear_cache

    where = default_cache_dir()
    if args.cache_command == "clear":
        gone = clear_cache(where, args.folder)
        which = f" of {args.folder}" if args.folder else ""
        print(f"removed {len(gone)} decoded folder(s){which} from {where / 'folders'}, "
              f"{human_bytes(sum(e.nbytes for e in gone))}")
        return 0
    entries = cache_entries(where)
    if not entries:
        print(f"no decoded folders in {where / 'folders'}")
        return 0
    print(f"{'on disk':>10}  {'images':>8}  {'px':>4}  {'made':16}  folder")
    for e in entries:
        made = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.created))
        folder = one_line(e.folder) if e.folder is not None else f"(unreadable: {e.path.name})"
        print(f"{human_bytes(e.nbytes):>10}  {e.images if e.images is not None else '?':>8}  "
              f"{e.size if e.size is not None else '?':>4}  {made:16}  {folder}")
    print(f"{human_bytes(sum(e.nbytes for e in entries)):>10}  in {len(entries)} decoded folder(s) under "
          f"{where / 'folders'}; `freezetui cache clear [FOLDER]` removes them")
    return 0


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
    main_parser, tui_parser = build_parsers()
    try:
        if argv and argv[0] in SUBCOMMANDS:
            args = main_parser.parse_args(argv)
            if args.command == "models":
                return cmd_models(args)
            if args.command == "plan":
                return cmd_plan_make(args) if args.plan_command == "make" else cmd_plan_show(args)
            if args.command == "sweep":
                return cmd_sweep(args)
            if args.command == "suggest":
                return cmd_suggest(args)
            if args.command == "cache":
                return cmd_cache(args)
            return cmd_train(args, main_parser)
        return cmd_tui(tui_parser.parse_args(argv))
    except FreezeTUIError as e:
        print(f"freezetui: error: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("freezetui: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `freezetui models | head`
        sys.stderr.close()
        return 0
    except IsADirectoryError as e:
        print(f"freezetui: error: {e.filename2 or e.filename} is a folder; give a file name", file=sys.stderr)
        return 1
    except OSError as e:  # a file we were told to read or write: name it, no traceback
        if e.errno is None:
            raise
        where = f" {e.filename}" if e.filename else ""
        print(f"freezetui: error: cannot use{where}: {e.strerror or e}", file=sys.stderr)
        return 1
