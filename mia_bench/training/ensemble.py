"""Training a group of models at once: one Lightning fit, parameters and buffers stacked per model, one vmapped
forward, each model on its own batches.

Why by hand: no library trains many independent models with per-model data and per-model random streams under one
optimizer step (``torch.func`` gives the stacking and the batched forward, nothing around them).

Each member is an ordinary :class:`~mia_bench.training.module.ClassifierModule`, built exactly as the one-at-a-time
path builds it (same seed, same initial weights). A step is, per member k, ``prepare_batch`` on member k's own
batch (its augmentation and other draws, replayed from member k's own random state), then one forward of all
members through ``vmap(functional_call)``, then per member ``training_loss``; the losses are summed, so each
member's slice of the stacked parameters gets exactly its own gradient. With an element-wise optimizer (SGD with
momentum or Nesterov, Adam, AdamW, ...) and a shared epoch schedule, every member then follows the trajectory it
would follow alone, up to float rounding: batched matrix products sum in another order than one model's, so
weights agree to about 1e-6 relative after a few epochs, a difference training then amplifies like any rounding.

After the fit the members get their own copies of their slices and are used exactly like models trained one at a
time (cache entries, predictors, signals).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from contextlib import contextmanager

import lightning.pytorch as pl
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from mia_bench import progress
from mia_bench.training.loader import TensorBatchLoader
from mia_bench.training.module import ClassifierModule

log = logging.getLogger(__name__)

#: Optimizers whose update of a parameter depends only on that parameter's own values, gradient and state, so a
#: step on the stack equals each model's step alone (a norm or a trust ratio over "all parameters" would not).
ELEMENTWISE_OPTIMIZERS = (
    torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam,
    torch.optim.RAdam, torch.optim.RMSprop, torch.optim.Adagrad, torch.optim.Adadelta,
)

#: Optimizers whose ``foreach`` implementation computes bit for bit what the single-tensor one does on a CPU
#: (tests/test_ensemble.py checks it on a stack) while allocating fewer temporaries: on the stack's large tensors it
#: steps 2-3x faster (16 digits MLPs: about 4 ms instead of 10 per step on one core), at no cost to exactness.
FOREACH_EXACT = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


def stacked_optimizer(factory, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """The recipe's optimizer on the stacked parameters, its ``foreach`` form where that is exact (see
    :data:`FOREACH_EXACT`) and the recipe chose no implementation. torch only picks foreach by itself on a GPU."""
    keywords = getattr(factory, "keywords", None)
    func = getattr(factory, "func", None)
    if (isinstance(keywords, dict) and isinstance(func, type) and issubclass(func, FOREACH_EXACT)
            and keywords.get("foreach") is None and not keywords.get("fused")):
        return factory(params, foreach=True)
    return factory(params)


class RandomState:
    """A member's own torch random stream (CPU, and the CUDA device it trains on), swapped in around its draws."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextmanager
    def active(self):
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
        try:
            yield
        finally:
            self.cpu = torch.get_rng_state()
            if self.cuda is not None:
                self.cuda = torch.cuda.get_rng_state(self.device)


class EnsembleLoader:
    """Batches of all members at once: ``(x [G, B, ...], y [G, B])``, member k's rows from its own
    :class:`TensorBatchLoader` (its records, its seeded order). Members must have as many records each."""

    def __init__(self, loaders: Sequence[TensorBatchLoader]) -> None:
        sizes = {len(ld.x) for ld in loaders}
        if len(sizes) != 1:
            raise ValueError(f"an ensemble group needs members with as many records each; got sizes {sorted(sizes)}")
        self.loaders = list(loaders)

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self):
        for batches in zip(*self.loaders, strict=True):
            yield torch.stack([x for x, _ in batches]), torch.stack([y for _, y in batches])


#: The callback hooks a member's callbacks get in the ensemble path, in the order Lightning calls them. A callback
#: may train here when it declares ``ensemble_safe = True``: it uses only these hooks, the trainer's epoch counters
#: and its own module (not the trainer's optimizers, loop or logged metrics).
MEMBER_HOOKS = ("on_fit_start", "on_train_start", "on_train_epoch_start", "on_train_epoch_end", "on_train_end",
                "on_fit_end")


class EnsembleModule(pl.LightningModule):
    """G members trained as one module (see the module docstring). ``states``: each member's random state right
    after it was built; ``loggers``: each member's own logger (or None), written once per epoch; ``callbacks``: each
    member's own callbacks (``ensemble_safe`` ones, see :data:`MEMBER_HOOKS`), called with that member.

    During the fit each member's parameters and buffers are views of its slices of the stack, so a callback reading
    or writing its member sees and changes the model being trained."""

    def __init__(
        self, members: Sequence[ClassifierModule], states: Sequence[RandomState], loggers=None, vectorize: bool = True,
        callbacks: Sequence[Sequence[pl.Callback]] | None = None,
    ) -> None:
        super().__init__()
        self.vectorize = vectorize
        self.members = list(members)  # a plain list: their parameters live in the stack below, not twice
        self.states = list(states)
        self.member_loggers = list(loggers) if loggers else [None] * len(self.members)
        self.member_callbacks = [list(c) for c in callbacks] if callbacks else [[] for _ in self.members]
        params, buffers = stack_module_state([m.model for m in self.members])
        self.param_names, self.buffer_names = list(params), list(buffers)
        trains = dict(self.members[0].model.named_parameters())
        self.stacked = nn.ParameterList(
            [nn.Parameter(params[n], requires_grad=trains[n].requires_grad) for n in self.param_names]
        )
        for i, name in enumerate(self.buffer_names):
            self.register_buffer(f"buffer_{i}", buffers[name])
        # The architecture without weights; kept out of the module tree so that Lightning does not move it.
        self._template = [copy.deepcopy(self.members[0].model).to("meta")]
        self._forward = vmap(self._member_forward, in_dims=(0, 0, 0), randomness="error")
        if self.members[0].compile_model:
            self._forward = torch.compile(self._forward)

    # ---------------------------------------------------------------------------------------------- forward
    def stacked_buffers(self) -> list[torch.Tensor]:
        return [getattr(self, f"buffer_{i}") for i in range(len(self.buffer_names))]

    def _member_forward(self, params: list, buffers: list, x: torch.Tensor) -> torch.Tensor:
        state = {**dict(zip(self.param_names, params, strict=True)),
                 **dict(zip(self.buffer_names, buffers, strict=True))}
        return functional_call(self._template[0], state, (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[G, B, ...]`` inputs (member k's rows are its own) -> ``[G, B, C]`` logits: one vmapped forward, or
        (``vectorize=False``) each member's forward on its slice of the stack in turn, which is faster on a CPU for
        convolutions, where vmap's grouped convolutions and batch norms cost more than they save (measured 2.4x
        slower than separate models for the cnn)."""
        params, buffers = list(self.stacked), self.stacked_buffers()
        if self.vectorize:
            return self._forward(params, buffers, x)
        layout = self.members[0].layout  # a member's 4-D batch can take the NHWC layout; a stack of them cannot
        return torch.stack([
            self._member_forward([p[k] for p in params], [b[k] for b in buffers], layout(x[k])) for k in range(len(x))
        ])

    # --------------------------------------------------------------------------------------------- training
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        inputs, targets = [], []
        for k, member in enumerate(self.members):
            with self.states[k].active():
                xk, tk = member.prepare_batch((x[k], y[k]))
            inputs.append(xk)
            targets.append(tk)
        logits = self(torch.stack(inputs))
        return sum(m.training_loss(logits[k], targets[k]) for k, m in enumerate(self.members))

    def _member_hook(self, hook: str) -> None:
        """Lightning's order: the callbacks' hook first, then the module's."""
        for member, callbacks in zip(self.members, self.member_callbacks, strict=True):
            for cb in callbacks:
                getattr(cb, hook)(self.trainer, member)
            if hook in ("on_train_epoch_start", "on_train_end"):
                getattr(member, hook)()

    def _share_stack(self) -> None:
        """Make every member's parameters and buffers views of its slices of the stack (on the stack's device)."""
        buffers = self.stacked_buffers()
        for k, member in enumerate(self.members):
            own = dict(member.model.named_parameters())
            for name, stacked in zip(self.param_names, self.stacked, strict=True):
                own[name].data = stacked.data[k]
            for name, stacked in zip(self.buffer_names, buffers, strict=True):
                owner, _, leaf = name.rpartition(".")
                member.model.get_submodule(owner)._buffers[leaf] = stacked[k]
            member.to(self.device)  # only updates its device attribute: the views are there already

    def on_fit_start(self) -> None:
        self._share_stack()
        self._member_hook("on_fit_start")

    def on_train_start(self) -> None:
        self._template[0].train()
        for m in self.members:
            m.train()
        self._member_hook("on_train_start")

    def on_train_epoch_start(self) -> None:
        self._member_hook("on_train_epoch_start")

    def on_train_epoch_end(self) -> None:
        """The members' callbacks, then each member's epoch means (and what its callbacks logged) to its own logger;
        their mean over members to the progress bar."""
        for m in self.members:
            m.logged = {}
        self._member_hook("on_train_epoch_end")
        means = [m.epoch_means() for m in self.members]
        for m, mm in zip(self.members, means, strict=True):
            m.check_epoch(mm, self.current_epoch)
        step = self.global_step
        for lg, metrics, m in zip(self.member_loggers, means, self.members, strict=True):
            values = {k: float(v) for k, v in metrics.items()} | m.logged | {"epoch": self.current_epoch}
            m.history.append({"step": step, **values})
            if lg:
                lg.log_metrics(values, step=step)
                lg.save()
        if means and means[0]:
            self.log_dict({k: torch.stack([mm[k] for mm in means]).mean() for k in means[0]}, prog_bar=True)
        ids = [getattr(m, "index", "?") for m in self.members]
        progress.epoch(self.current_epoch + 1, self.trainer.max_epochs, f"models {ids[0]}-{ids[-1]}")

    def on_train_end(self) -> None:
        self._member_hook("on_train_end")

    def on_fit_end(self) -> None:
        self._member_hook("on_fit_end")

    def configure_optimizers(self):
        optimizer = stacked_optimizer(self.members[0].optimizer_factory, list(self.stacked))
        if not isinstance(optimizer, ELEMENTWISE_OPTIMIZERS):
            raise ValueError(
                f"{type(optimizer).__name__} is not an element-wise optimizer: the ensemble path would mix the models"
                " (set train.engine=sequential)"
            )
        first = self.members[0]
        scheduler = first.make_scheduler(optimizer, self.trainer)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": first.schedule_per}}

    # ----------------------------------------------------------------------------------------------- result
    def unstack(self) -> list[ClassifierModule]:
        """The members with their trained weights and buffers, each its own copy (as if trained alone)."""
        buffers = self.stacked_buffers()
        for k, member in enumerate(self.members):
            own = dict(member.model.named_parameters())
            for name, stacked in zip(self.param_names, self.stacked, strict=True):
                own[name].data = stacked.data[k].clone()
            for name, stacked in zip(self.buffer_names, buffers, strict=True):
                owner, _, leaf = name.rpartition(".")
                member.model.get_submodule(owner)._buffers[leaf] = stacked[k].detach().clone()
            member.to(stacked.device if self.param_names else self.device)
            member.logged = None
            member.train(self.training)
        for lg in self.member_loggers:
            if lg:
                lg.finalize("success")
        return self.members


def ensemble_obstacle(module: ClassifierModule, trainer, callbacks: Sequence[type], validate: bool) -> str | None:
    """Why models like ``module`` would not train exactly in the ensemble path (``trainer``: the Trainer's config;
    ``callbacks``: the classes of the callbacks each model trains with), or None when they would."""
    if module.ensemble_unsupported:
        return module.ensemble_unsupported
    if type(module).make_train_loader is not ClassifierModule.make_train_loader:
        return f"{type(module).__name__} samples its own batches"
    unsafe = sorted({c.__name__ for c in callbacks if not getattr(c, "ensemble_safe", False)})
    if unsafe:
        return f"callbacks {unsafe} act on the optimizer or the loop of one model at a time"
    if validate:
        return "per-epoch validation (train.validate) runs on one model at a time"
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in module.model.modules()):
        return "dropout would draw the masks of all models at once, not each model's own"
    if trainer.get("gradient_clip_val"):
        return "gradient clipping takes one norm over all parameters"
    if str(trainer.get("precision", "32-true")) in ("16-mixed", "16"):
        return "fp16 loss scaling skips a step for every model when one model overflows"
    if trainer.get("accumulate_grad_batches", 1) != 1:
        return "gradient accumulation is not supported in the ensemble path"
    return None
