"""The plan leaves the tool: a staged plan trained (a) by a plain PyTorch loop written with the
public API only, (b) by a Lightning Trainer with FreezePlanCallback and (c) by ``freezetui
train`` gives the same rate for every parameter at every optimizer step, the same trainable
set at every step, and the same weights and BatchNorm statistics after two epochs.

All three read identical tensors in the same order: the split's images normalised once by the
run's own BatchTransform (elementwise, so a batch of it equals the transform of the batch),
batches cut from the same ``torch.randperm`` stream ``train()`` draws (one per epoch from a
generator seeded with the run's seed), no augmentation, no feature cache."""


import pytest
import torch
import torch.nn.functional as F

from freezetui import FreezePlan, PlanSchedule, TrainConfig, build_model, train
from freezetui.core import train as train_module
from freezetui.core.data import BatchTransform, load_data
from freezetui.core.models import model_info
from freezetui.core.schedule import fine_tune_recipe

LR, WD, EPOCHS, BATCH, SEED = 0.01, 1e-2, 2, 32, 0


pytestmark = pytest.mark.usefixtures("one_thread")  # one thread: the same kernels and reductions in every run


@pytest.fixture(scope="module")
def data():
    return load_data("shapes", shapes_train=128, shapes_val=32)


def layer_decay_plan(model):
    """Stem and block1 frozen, layer decay 0.5; at epoch 2 block1 unfreezes (warming up over the
    epoch) at its own stage rate, every rate halves, BatchNorm starts training."""
    plan = FreezePlan.from_model(model, batchnorm="freeze")
    plan.freeze("stem")
    plan.freeze("block1")
    plan.set_layer_decay(0.5)
    plan.add_stage(2, unfreeze=["block1"], lr_mult=[("block1", 0.3)], lr_scale=0.5, batchnorm="train")
    return plan


def recipe_plan(model):
    """fastai's fine_tune: lr_mult rules, train_bn, and a stage that unfreezes everything with
    its own lr_mult spread, lr_scale 0.5 and a restarted schedule."""
    return fine_tune_recipe(FreezePlan.from_model(model), model)


PLANS = {"layer_decay": layer_decay_plan, "recipe": recipe_plan}


def setup(make_plan, data):
    torch.manual_seed(SEED)
    model = build_model("tiny:tiny_cnn", weights="none")
    plan = make_plan(model)
    plan.check_fits(model)
    transform = BatchTransform.for_data(model_info(model), data)
    x = transform(data.train.images)  # as train() feeds each batch
    return model, FreezePlan.from_dict(plan.to_dict()), x, data.train.labels  # the plan as a file gives it


def batches(n):
    """Each epoch's batches, as train() cuts them."""
    gen = torch.Generator().manual_seed(SEED)
    while True:
        perm = torch.randperm(n, generator=gen)
        yield [perm[i * BATCH:(i + 1) * BATCH] for i in range(n // BATCH)]


def recorder(model, log):
    """An optimizer pre-step hook logging every parameter's rate and the trainable set."""
    names = {id(p): n for n, p in model.named_parameters()}

    def hook(opt, args, kwargs):
        log.append(({names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]},
                    sorted(n for n, p in model.named_parameters() if p.requires_grad)))
    return hook


def run_public_api(make_plan, data):
    """(a) The README's loop."""
    model, plan, x, y = setup(make_plan, data)
    log = []
    steps = len(y) // BATCH
    optimizer = torch.optim.AdamW(plan.param_groups(model, lr=LR, weight_decay=WD))
    optimizer.register_step_pre_hook(recorder(model, log))
    rates = PlanSchedule(plan, lr=LR, epochs=EPOCHS, steps_per_epoch=steps, schedule="cosine", warmup_epochs=0.5)
    order = batches(len(y))
    for epoch in range(1, EPOCHS + 1):
        plan.enter_epoch(model, epoch)
        model.train()
        for step, idx in enumerate(next(order), start=1):
            rates.set_rates(optimizer, epoch, step)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]).float(), y[idx]).backward()
            optimizer.step()
    return model, log


def run_freezetui_train(make_plan, data, monkeypatch):
    """(c) ``freezetui train``'s core."""
    model, plan, _, _ = setup(make_plan, data)
    log = []
    made = train_module.make_optimizer

    def make_optimizer(params, config, device):
        opt = made(params, config, device)
        opt.register_step_pre_hook(recorder(model, log))
        return opt

    monkeypatch.setattr(train_module, "make_optimizer", make_optimizer)
    config = TrainConfig(epochs=EPOCHS, batch_size=BATCH, lr=LR, weight_decay=WD, optimizer="adamw", augment=False,
                         cache=False, device="cpu", seed=SEED, schedule="cosine", warmup_epochs=0.5)
    result = train(model, plan, data, config)
    assert result.error is None and result.frozen_unchanged
    return model, log


def run_lightning(make_plan, data):
    """(b) A LightningModule of the user's, with FreezePlanCallback."""
    L = pytest.importorskip("lightning")
    from freezetui.lightning import FreezePlanCallback, plan_param_groups

    model, plan, x, y = setup(make_plan, data)
    log = []

    class Classifier(L.LightningModule):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def training_step(self, batch, batch_idx):
            xb, yb = batch
            return F.cross_entropy(self.net(xb).float(), yb)

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(plan_param_groups(self))
            optimizer.register_step_pre_hook(recorder(self.net, log))
            return optimizer

    class Order(torch.utils.data.Sampler):
        def __init__(self):
            self.epochs = batches(len(y))

        def __len__(self):
            return len(y) // BATCH

        def __iter__(self):
            return iter([i.tolist() for i in next(self.epochs)])

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_sampler=Order())
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        use_distributed_sampler=False,
                        callbacks=[FreezePlanCallback(plan, lr=LR, weight_decay=WD, schedule="cosine",
                                                      warmup_epochs=0.5)])
    trainer.fit(Classifier(model), loader)
    return model, log


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(PLANS))
def test_own_loop_lightning_and_freezetui_train_agree(name, data, monkeypatch):
    make_plan = PLANS[name]
    a, log_a = run_public_api(make_plan, data)
    c, log_c = run_freezetui_train(make_plan, data, monkeypatch)
    b, log_b = run_lightning(make_plan, data)
    steps = len(data.train.labels) // BATCH
    assert len(log_a) == len(log_b) == len(log_c) == EPOCHS * steps
    assert log_a == log_c  # the same rate for every parameter, the same trainable set, at every step
    assert log_b == log_a
    assert log_a[0][1] != log_a[-1][1]  # the stage changed the trainable set …
    assert len({tuple(sorted(set(r.values()))) for r, _ in log_a}) > 1  # … and the rates moved
    sa, sb, sc = state(a), state(b), state(c)
    for k in sa:  # bit for bit, weights and BatchNorm statistics
        assert torch.equal(sa[k], sc[k]), k  # train() runs the frozen prefix under no_grad: the same kernels
        # Lightning orders a step differently (forward, zero_grad, backward inside optimizer.step's
        # closure; the hooks around it), but runs the same operations on the same tensors, with
        # no loss scaling in 32-true precision and no accumulation: nothing is rounded differently.
        assert torch.equal(sa[k], sb[k]), k


def test_importing_freezetui_imports_no_lightning():
    import subprocess
    import sys

    code = "import sys, freezetui, freezetui.cli; print([m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_plan_from_a_file_learns_the_model_s_norm_layers(data):
    """train_bn in a file names no norm layers: param_groups and enter_epoch read them from the model."""
    model, plan, _, _ = setup(recipe_plan, data)
    assert plan.train_bn and not plan.norm_params
    active = plan.enter_epoch(model, 1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "stem.1.weight" in trainable and "stem.0.weight" not in trainable and "fc.weight" in trainable
    assert set(active.trainable) == trainable
    assert plan.enter_epoch(model, 2).trainable == list(plan.params)  # the recipe's stage 2: everything


def test_the_callback_refuses_an_optimizer_without_the_plan_s_groups(data):
    L = pytest.importorskip("lightning")
    from freezetui.core.errors import PlanError
    from freezetui.lightning import FreezePlanCallback

    model, plan, x, y = setup(layer_decay_plan, data)

    class Classifier(L.LightningModule):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters())

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[FreezePlanCallback(plan, lr=LR)])
    with pytest.raises(PlanError, match="plan_param_groups"):
        trainer.fit(Classifier(model), loader)


def test_the_readme_loop_runs_as_written(tmp_path, monkeypatch, data):
    """The README's loop, verbatim, on a staged plan saved to plan.json."""
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text[text.index("## The plan in your own training loop"):]
    code = section[section.index("```python") + len("```python"):section.index("```\n", section.index("```python"))]
    model, plan, x, y = setup(layer_decay_plan, data)
    monkeypatch.chdir(tmp_path)
    plan.save("plan.json")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loader = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(y), BATCH)]
    exec(compile(code, "README.md", "exec"), {"model": model, "loader": loader})
    after = dict(model.named_parameters())
    assert torch.equal(after["stem.0.weight"], before["stem.0.weight"])  # frozen throughout
    assert not torch.equal(after["block1.0.weight"], before["block1.0.weight"])  # unfrozen by the stage
