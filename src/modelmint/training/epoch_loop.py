"""The epoch loop the torch recipes share: resume, train, validate, keep the best, save.

A recipe keeps what is its own (the network, the batches' forward pass, what its
validation measures) and hands the rest to ``fit_epochs``::

    trainee = Trainee(net, optimizer)
    state = fit_epochs(
        trainee,
        epochs=self.epochs,
        train_epoch=lambda epoch: {"loss": step_batches(optimizer, batches(epoch), loss_of)},
        validate=lambda: Validation({"val_loss": loss}, (-loss,)),
        patience=self.patience,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        params=self.get_params(),
    )

Every random draw of an epoch is meant to come from (seed, epoch) alone
(``shuffled_batches``), so that a run resumed from its checkpoint trains exactly
like an uninterrupted one and every rank of a distributed run agrees on the order.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray

from modelmint.training import distributed
from modelmint.training.checkpoints import load_checkpoint, save_checkpoint
from modelmint.training.recipe import Progress, silent

__all__ = [
    "EpochState",
    "Score",
    "Trainee",
    "Validation",
    "fit_epochs",
    "shuffled_batches",
    "step_batches",
    "torch_threads",
]

IndexArray = NDArray[np.int64]
StateDict = dict[str, Any]
# Greater is better, compared element by element: a tie on the first element is
# broken by the second (image accuracy, then minus the validation loss).
Score = tuple[float, ...]


class Validation(NamedTuple):
    """One epoch's validation: the metrics to report and the score that ranks epochs."""

    metrics: dict[str, float]
    score: Score


@dataclass
class EpochState:
    """Where training stands: what a checkpoint stores besides weights and optimizer."""

    epoch: int = 0  # epochs completed
    best_score: Score = ()  # () until an epoch has been validated
    best_epoch: int = 0
    best_state: StateDict | None = None
    stale: int = 0  # validated epochs since the best one
    stopped: bool = False
    history: list[dict[str, float]] = field(default_factory=list)

    def judge(self, score: Score, module: torch.nn.Module, patience: int) -> None:
        """Keep ``module``'s weights when ``score`` beats every earlier epoch's; stop
        once ``patience`` epochs in a row have not."""
        # Against minus infinity rather than "nothing yet": a NaN score never wins.
        if score > (self.best_score or (-math.inf,) * len(score)):
            self.best_score, self.best_epoch, self.stale = score, self.epoch, 0
            self.best_state = copy.deepcopy(module.state_dict())
        else:
            self.stale += 1
            self.stopped = self.stale >= patience


@dataclass(frozen=True)
class Trainee:
    """What a checkpoint saves and a resumed run loads back."""

    module: torch.nn.Module  # the unwrapped network: its weights are saved and restored
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    # The weights to save and how to load them back; default: the whole state dict.
    # A LoRA run saves its adapter only.
    weights: Callable[[], Mapping[str, Any]] | None = None
    load_weights: Callable[[Mapping[str, Any]], object] | None = None

    def save(self, directory: Path, params: dict[str, Any], state: EpochState) -> None:
        snapshot = {
            "model": self.weights() if self.weights else self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "rng": torch.get_rng_state(),
            "progress": vars(state),
        }
        save_checkpoint(directory, params, snapshot)

    def resume(self, directory: Path | None, params: dict[str, Any]) -> EpochState:
        """The state saved in ``directory`` (weights and optimizer loaded back), or
        a fresh start when there is no checkpoint."""
        saved = load_checkpoint(directory, params)
        if saved is None:
            return EpochState()
        if self.load_weights is not None:
            self.load_weights(saved["model"])
        else:
            self.module.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        return EpochState(**saved["progress"])


def fit_epochs(
    trainee: Trainee,
    *,
    epochs: int,
    train_epoch: Callable[[int], dict[str, float]],
    validate: Callable[[], Validation] | None = None,
    patience: int | None = None,
    progress: Progress = silent,
    checkpoint_dir: Path | None = None,
    params: dict[str, Any],
) -> EpochState:
    """Train until ``epochs`` epochs are done, resuming from ``checkpoint_dir``.

    ``train_epoch(epoch)`` (epoch counts from 1) trains one epoch and returns its
    metrics. ``validate()``, when given, scores the epoch; with a ``patience`` the
    best-scoring epoch's weights are kept, and training stops early after
    ``patience`` epochs without a better score. Without one, the last weights stay.
    After each epoch rank 0 saves a checkpoint (``params`` stored beside it) and
    ``progress`` hears of the epoch.
    """
    state = trainee.resume(checkpoint_dir, params)
    while not state.stopped and state.epoch < epochs:
        state.epoch += 1
        metrics = train_epoch(state.epoch)
        if validate is not None:
            validation = validate()
            metrics |= validation.metrics
            if patience is not None:
                state.judge(validation.score, trainee.module, patience)
        state.history.append(metrics)
        if checkpoint_dir is not None and distributed.is_main():
            trainee.save(checkpoint_dir, params, state)
        distributed.barrier()  # no rank starts the next epoch while rank 0 still saves
        progress("epoch", state.epoch, epochs, metrics)
    if state.best_state is not None:
        trainee.module.load_state_dict(state.best_state)
    return state


def shuffled_batches(rng: np.random.Generator, rows: int, batch_size: int) -> list[IndexArray]:
    """This rank's shard of a random order of ``rows`` rows, cut into batches.

    Seed ``rng`` from (seed, epoch) alone: every rank then draws the same order
    before taking its shard, and a resumed run draws what an uninterrupted one did.
    The batches are drawn at once, so draws the caller makes from ``rng`` next
    (BPR's negatives) come after the permutation.
    """
    order = distributed.shard(rng.permutation(rows).astype(np.int64))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def step_batches(
    optimizer: torch.optim.Optimizer,
    batches: Iterable[IndexArray],
    loss_of: Callable[[IndexArray], torch.Tensor],
    *,
    after_step: Callable[[], object] | None = None,
    per_row: bool = False,
) -> float:
    """One optimizer step on ``loss_of(rows)`` for each batch of row indices.

    Returns the mean loss: over batches, or over rows with ``per_row`` (then a short
    last batch weighs less). ``after_step`` runs after each step (a per-step learning
    rate schedule)."""
    total, seen = 0.0, 0
    for rows in batches:
        optimizer.zero_grad()
        loss = loss_of(rows)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        if after_step is not None:
            after_step()
        weight = len(rows) if per_row else 1
        total += float(loss.detach()) * weight
        seen += weight
    return total / max(seen, 1)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads, then restore the caller's.

    The recipes' networks are small: a step is microseconds of work, and on a busy
    machine extra threads mostly wait for a core (or for each other at every op).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
