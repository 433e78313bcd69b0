"""A sweep: the same model, data, initial weights and settings trained under a ladder of plans,
head only, then the head and the last stage, and so on down to everything trainable; each rung
is an ordinary run (one folder, :func:`runner.execute`), and ``sweep.json`` lists them."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from pathlib import Path
from typing import Callable

from torch import nn

from . import distributed
from .atomic import write_json
from .cost import estimate, human_bytes, human_flops
from .data import Dataset
from .errors import PlanError
from .models import find_heads
from .plan import FreezePlan, escape_glob, module_prefixes
from .runner import Reporter, RunInputs, check_settings, cost_profile, execute, prepare_run, resume_spec
from .runs import config_fields
from .specs import ModelSpec, RunSpec
from .config import TrainConfig
from .events import Callback

SETTINGS = "sweep-settings.json"
SWEEP = "sweep.json"
EXPAND_SHARE = 0.9  # a stage holding more than this share of the parameters is split into its children
TINY_SHARE = 0.01  # a stage smaller than this share unfreezes together with the stage before it
MAX_STAGES = 16  # a stage holding most layers is split into its children unless that makes more


# ----------------------------------------------------------------------------- the ladder


def _param_order(model: nn.Module, traced) -> list[str]:
    names = [n for n, _ in model.named_parameters()]
    if traced is None:
        return names
    seen = set(traced.param_order)
    return [n for n in traced.param_order if n in set(names)] + [n for n in names if n not in seen]


def _groups(module: nn.Module, prefix: str, params: set[str], numel: dict[str, int]) -> list[tuple[str, list[str]]]:
    """(name, parameters) for each child holding some of ``params`` and each parameter held
    directly; a child holding nearly all of them is split into its own children."""
    out: list[tuple[str, list[str]]] = []
    for pname, _ in module.named_parameters(recurse=False):
        full = prefix + pname
        if full in params:
            out.append((full, [full]))
    for cname, child in module.named_children():
        full = prefix + cname
        held = [n for n, _ in child.named_parameters(prefix=full) if n in params]
        if held:
            out.append((full, held))
    total = sum(numel[n] for n in params)
    for i, (name, held) in enumerate(out):
        if name not in params and total and sum(numel[n] for n in held) > EXPAND_SHARE * total:
            sub = _groups(module.get_submodule(name[len(prefix):]), name + ".", set(held), numel)
            if len(sub) > 1:
                return out[:i] + sub + out[i + 1:]
    return out


def _merge_tiny(groups: list[tuple[str, list[str]]], numel: dict[str, int], total: int) -> list[tuple[str, list[str]]]:
    """Tiny stages (a stem BatchNorm, a final LayerNorm) join the stage before them."""
    merged: list[tuple[str, list[str]]] = []
    carry: list[str] = []
    for name, held in reversed(groups):  # from the head towards the input
        carry = carry + held
        if sum(numel[n] for n in held) >= TINY_SHARE * total:
            merged.append((name, carry))
            carry = []
    if carry:
        if merged:
            merged[-1] = (merged[-1][0], merged[-1][1] + carry)
        else:
            merged.append((groups[0][0], carry))
    merged.reverse()
    return merged


def stages(model: nn.Module, traced=None) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(head parameters, stages): the model's stages in forward order, each a name and its
    parameters, the head's parameters left out. Stages are the model's top-level children (a
    child holding nearly everything, like a ViT's encoder, is split into its blocks); tiny ones
    (a stem BatchNorm, a final LayerNorm) join the stage before them. A stage holding most of
    the layers (AlexNet's and VGG's ``features``, MobileNet's) is split into its children when
    that gives more stages, up to ``MAX_STAGES``."""
    order = _param_order(model, traced)
    pos = {n: i for i, n in enumerate(order)}
    numel = {n: p.numel() for n, p in model.named_parameters()}
    heads = find_heads(model)
    head = [n for n in order if any(n.startswith(h + ".") for h in heads)]
    rest = set(order) - set(head)
    groups = _groups(model, "", rest, numel)
    groups.sort(key=lambda g: min(pos[n] for n in g[1]))
    if not head and groups:  # no Linear head: the last stage plays its part
        head = groups.pop()[1]
    total = sum(numel[n] for n in rest) or 1
    merged = _merge_tiny(groups, numel, total)
    # A stage holding most of the model's layers (AlexNet's and VGG's `features`, MobileNet's)
    # is split into its children, while that gives more stages and not too many.
    modules = dict(model.named_modules())
    layers = {n.rpartition(".")[0] for n in rest}  # the modules holding parameters of their own
    tried: set[str] = set()
    while True:
        deep = [g for g in groups if g[0] in modules and g[0] not in tried
                and all(n.startswith(g[0] + ".") for n in g[1])
                and 2 * sum(1 for m in layers if m == g[0] or m.startswith(g[0] + ".")) > len(layers)]
        if not deep:
            break
        name, held = deep[0]
        tried.add(name)
        at = groups.index((name, held))
        trial = groups[:at] + _groups(modules[name], name + ".", set(held), numel) + groups[at + 1:]
        trial.sort(key=lambda g: min(pos[n] for n in g[1]))
        split_merged = _merge_tiny(trial, numel, total)
        if len(merged) < len(split_merged) <= MAX_STAGES:
            groups, merged = trial, split_merged
    return head, [(name, sorted(held, key=pos.__getitem__)) for name, held in merged]


def ladder(model: nn.Module, traced=None, base: FreezePlan | None = None, rungs: int | None = None,
           batchnorm: str = "freeze") -> list[tuple[str, FreezePlan]]:
    """The sweep's plans, cheapest first: ``head`` (the head alone trains), ``+<stage>`` for each
    stage from the last to the second, then ``all``. ``rungs`` keeps the first ``rungs - 1`` and
    ``all``. ``base`` supplies the plan's model block (else it is read from ``model``)."""
    if rungs is not None and rungs < 1:
        raise PlanError(f"a sweep needs at least one rung, got --rungs {rungs}")
    head, parts = stages(model, traced)
    # base gives the model block only: a rung is the ladder's plan, never base's schedule
    base = FreezePlan.from_model(model, batchnorm=batchnorm, spec=base.model if base is not None else None)
    steps: list[tuple[str, list[str]]] = [("head", head)]
    for name, held in reversed(parts):
        steps.append((f"+{name}", held))
    if len(steps) > 1:
        steps[-1] = ("all", steps[-1][1])
    # New (randomly initialised) modules train on every rung: frozen, they stay noise.
    new = set(base.new_modules)
    fresh = [n for n in base.params if any(m in new for m in module_prefixes(n))]
    out, unfrozen = [], fresh
    for i, (name, held) in enumerate(steps):
        added = [n for n in held if n not in unfrozen]
        if not added and 0 < i < len(steps) - 1:
            continue  # a stage holding only new modules already trains from the first rung
        unfrozen = unfrozen + added
        plan = only_these_train(base, unfrozen, batchnorm)
        plan.extra["sweep_rung"] = name
        out.append((name, plan))
    if rungs is not None and rungs < len(out):
        out = out[:rungs - 1] + out[-1:] if rungs > 1 else out[:1]
    return out


def only_these_train(base: FreezePlan, names: list[str], batchnorm: str = "freeze") -> FreezePlan:
    """A copy of ``base`` (its model block; no schedule) where ``names`` train and the rest is
    frozen, with the rules that say so (a sweep's rungs, ``suggest``'s plan)."""
    plan = base.copy()
    plan.batchnorm = batchnorm
    plan.set_frozen(list(plan.params), True)
    plan.set_frozen(names, False)
    plan.extra["rules"] = [{"action": "freeze", "glob": "*"}] + [
        {"action": "unfreeze", "glob": escape_glob(n)} for n in names]
    return plan


def rung_folder(index: int, name: str) -> str:
    return f"{index:02d}-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", name.lstrip("+")) or "rung")


# ----------------------------------------------------------------------------- running it


def _settings(model_spec: ModelSpec, data_spec: str, config: TrainConfig, rungs, batchnorm: str) -> dict:
    cfg = config_fields(config)
    cfg.pop("device", None)  # a sweep may continue on another device
    return {"model": dataclasses.asdict(model_spec), "data": data_spec, "config": cfg, "rungs": rungs,
            "batchnorm": batchnorm}


def _check_out(out: Path, settings: dict, force: bool) -> None:
    path = out / SETTINGS
    if path.is_file():
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise PlanError(f"cannot read {path} ({e}); remove it to start the sweep again") from None
        differ = [k for k in settings if json.dumps(before.get(k), sort_keys=True) != json.dumps(settings[k],
                                                                                                   sort_keys=True)]
        if differ and not force:
            raise PlanError(f"{out} holds a sweep with other settings ({', '.join(differ)} differ); continue it "
                            f"with the same options, or choose another --out")
        return
    if out.exists() and not out.is_dir():
        raise PlanError(f"--out {out} is a file; give a folder for the sweep")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise PlanError(f"--out {out} already holds files that are not a sweep; choose another folder "
                        f"or write into it anyway with --force")


def _finished(run_dir: Path) -> dict | None:
    """The summary of a rung that completed, else None."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if summary.get("stopped") or summary.get("error") or not (run_dir / "model.pt").is_file():
        return None
    return summary


def _row(name: str, run_dir: Path, plan: FreezePlan, summary: dict, est: dict) -> dict:
    acc, best_acc, seconds = summary.get("val_acc"), summary.get("best_val_acc"), summary.get("seconds") or 0.0
    return {
        "name": name,
        "run": str(run_dir),
        "plan": str(run_dir / "plan.json"),
        "trainable": plan.counts["trainable"],
        "total": plan.counts["total"],
        "val_acc": acc,
        "best_val_acc": best_acc,
        "epochs": summary.get("epochs"),
        "seconds": seconds,
        "images_per_s": summary.get("train_images_per_s"),
        "accuracy_per_s": (best_acc / seconds) if best_acc is not None and seconds else None,
        "feature_cache": summary.get("feature_cache"),
        "frozen_unchanged": summary.get("frozen_unchanged"),
        "stopped": bool(summary.get("stopped")),
        "estimate": est,
    }


def run_sweep(model_spec: ModelSpec, data_spec: str, config: TrainConfig, out, rungs: int | None = None,
              batchnorm: str = "freeze",
              callbacks_factory: Callable[[int, str], list[Callback]] | None = None,
              stop: threading.Event | None = None, reporter: Reporter | None = None, *,
              force: bool = False, inputs: RunInputs | None = None, data: Dataset | None = None) -> list[dict]:
    """Train every rung of the ladder on ``data_spec``, writing ``out/NN-<rung>/`` per rung and
    ``out/sweep.json`` after each. Called again on the same ``out`` with the same settings it
    continues: finished rungs are kept, a stopped rung resumes from its last checkpoint.
    Returns the rows of ``sweep.json``; the last row has ``stopped`` set when ``stop`` ended
    the sweep early.

    The model and data are those :func:`runner.prepare_run` makes for ``freezetui train`` with
    the same options (one cache entry, the same sizes), or the caller's ``inputs`` (the TUI's):
    every rung starts from the weights they hold when the sweep starts, and is a run on them.
    ``data``: the data of ``data_spec``, loaded already.

    Under torchrun the processes hold one process group for the whole sweep; each builds the
    same ladder from the same seed, rank 0 alone reads and writes the sweep's files and
    reports, and the others follow its decisions (a rung kept, resumed or started)."""
    out = Path(out)
    reporter = reporter or Reporter()
    spec = RunSpec(data=data_spec, config=config, out=None, model=model_spec, batchnorm=batchnorm)
    device = check_settings(spec)
    settings = _settings(model_spec, data_spec, config, rungs, batchnorm)
    with distributed.process_group(config.device) as (rank, _):
        if rank:
            distributed.quiet_stdout()
            reporter = Reporter()
        distributed.decided_by_rank_zero(lambda: _claim(out, settings, force))
        if inputs is None:
            with distributed.rank_zero_first():  # a folder's decoded cache is written once
                inputs = prepare_run(spec, reporter, device, data)
        return _sweep(inputs, data_spec, model_spec, config, out, rungs, batchnorm, callbacks_factory, stop,
                      reporter, rank)


def _claim(out: Path, settings: dict, force: bool) -> None:
    _check_out(out, settings, force)
    write_json(out / SETTINGS, settings)


def _sweep(inputs: RunInputs, data_spec, model_spec, config, out, rungs, batchnorm, callbacks_factory, stop,
           reporter, rank) -> list[dict]:
    model = inputs.model
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    plans = ladder(model, inputs.traced, base=inputs.plan, rungs=rungs, batchnorm=batchnorm)
    # the estimates go into sweep.json, which rank 0 writes
    profile = cost_profile(inputs, config, reporter) if rank == 0 else None
    batch = min(config.batch_size, len(inputs.data.train))
    rows: list[dict] = []
    for i, (name, plan) in enumerate(plans):
        if rows and distributed.decided_by_rank_zero(lambda: stop is not None and stop.is_set()):
            break  # stopped between rungs: the next one does not start
        run_dir = out / rung_folder(i, name)
        est = estimate(profile, plan, batch, config.optimizer, config.momentum, prefix=inputs.prefix(plan)) \
            if profile is not None else None
        summary, resuming = distributed.decided_by_rank_zero(
            lambda: (_finished(run_dir), (run_dir / "checkpoint.pt").is_file()))
        if summary is not None:
            reporter.note(f"rung {i + 1}/{len(plans)} {name}: finished before, kept ({run_dir})")
            rows.append(_row(name, run_dir, plan, summary, est))
            continue
        model.load_state_dict(initial)
        if resuming:  # rank 0 writes the checkpoint again only after every process has read it
            spec = resume_spec(run_dir, epochs=config.epochs, device=config.device)
            reporter.note(f"rung {i + 1}/{len(plans)} {name}: resuming after epoch {spec.resume['epoch']}")
        else:
            spec = RunSpec(data=data_spec, config=dataclasses.replace(config), out=run_dir, plan=plan,
                           model=model_spec, force=True)
            reporter.note(f"rung {i + 1}/{len(plans)} {name}: {plan.counts['trainable']:,} trainable parameters")
        callbacks = list(callbacks_factory(i, name)) if callbacks_factory else []
        result = execute(spec, callbacks, stop, reporter, inputs=inputs)
        rows.append(_row(name, run_dir, plan, result.summary(), est))
        if rank == 0:
            write_json(out / SWEEP, rows)
        if result.stopped:
            break
    if rank == 0:
        write_json(out / SWEEP, rows)
    return rows


# ----------------------------------------------------------------------------- reading it


def best(rows: list[dict]) -> dict:
    """The finished rung with the best accuracy and the one with the best accuracy per second
    of its run (None when no rung finished)."""
    done = [r for r in rows if not r.get("stopped") and r.get("best_val_acc") is not None]
    return {
        "accuracy": max(done, key=lambda r: r["best_val_acc"], default=None),
        "accuracy_per_s": max((r for r in done if r.get("accuracy_per_s") is not None),
                              key=lambda r: r["accuracy_per_s"], default=None),
    }


def format_table(rows: list[dict]) -> str:
    """The sweep as printed: one line per rung, then the best rungs."""
    head = ("rung", "trainable", "activations", "FLOPs/img", "val acc", "best", "seconds", "img/s", "best/s")
    lines = []
    for r in rows:
        est = r.get("estimate") or {}
        pct = (lambda v: "" if v is None else f"{100 * v:.1f}%")
        lines.append((
            r["name"] + (" (stopped)" if r.get("stopped") else ""),
            f"{r['trainable']:,}",
            human_bytes(est["activation_bytes"]) if "activation_bytes" in est else "",
            human_flops(est["flops_per_image"]) if "flops_per_image" in est else "",
            pct(r.get("val_acc")), pct(r.get("best_val_acc")),
            f"{r.get('seconds') or 0:.1f}",
            f"{r.get('images_per_s') or 0:,.0f}",
            "" if r.get("accuracy_per_s") is None else f"{100 * r['accuracy_per_s']:.2f}%",
        ))
    widths = [max(len(h), *(len(line[k]) for line in lines)) if lines else len(h) for k, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if k == 0 else c.rjust(w)  # noqa: E731
                                  for k, (c, w) in enumerate(zip(cells, widths)))
    text = [fmt(head)] + [fmt(line) for line in lines]
    b = best(rows)
    if b["accuracy"] is not None:
        r = b["accuracy"]
        text.append(f"best accuracy: {r['name']} ({100 * r['best_val_acc']:.1f}% in {r['seconds']:.1f}s)")
    if b["accuracy_per_s"] is not None:
        r = b["accuracy_per_s"]
        text.append(f"best accuracy per second: {r['name']} ({100 * r['best_val_acc']:.1f}% in {r['seconds']:.1f}s)")
    return "\n".join(text)
