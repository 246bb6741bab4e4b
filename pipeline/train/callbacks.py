"""The Keras callbacks of :func:`pipeline.train.fit.fit`: early stopping on validation
top-1 with the best epoch's weights restored, the time budget, and each epoch's record
and progress line.

Imported by ``fit`` when it runs (TensorFlow is imported here at module level, so no
command's ``--help`` may import this module).
"""

import time
from typing import Dict, List, Optional

import numpy as np

from pipeline.errors import Log
from pipeline.native import tf_environment
from pipeline.train.fit import progress_line
from pipeline.train.schedule import Plan, epochs_that_fit

tf_environment()  # before TensorFlow's first import
import tf_keras as keras  # noqa: E402

#: The figures of each epoch in ``EpochRecord.history``: deterministic (a rerun gives the same).
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")


class PatienceStopping(keras.callbacks.EarlyStopping):
    """Keras' early stopping on ``val_accuracy``: stops once it has not improved for
    ``plan.patience`` epochs and restores the best epoch's weights when training ends.
    Unlike Keras' own, never stops before ``plan.min_epochs`` have run (a small model can
    sit at chance for its first epochs); they still count towards the patience."""

    def __init__(self, plan: Plan):
        super().__init__(monitor="val_accuracy", mode="max", patience=plan.patience,
                         restore_best_weights=True)
        self.min_epochs = plan.min_epochs

    def on_epoch_end(self, epoch, logs=None):
        stop, stopped_epoch = self.model.stop_training, self.stopped_epoch
        super().on_epoch_end(epoch, logs)
        if epoch + 1 < self.min_epochs:
            self.model.stop_training, self.stopped_epoch = stop, stopped_epoch

    @property
    def stopped(self) -> bool:
        """Whether the patience ran out (Keras never stops at the first epoch, 0)."""
        return self.stopped_epoch > 0


class TimeBudget(keras.callbacks.Callback):
    """Stops before an epoch that would end past ``budget_s`` (judged by the last
    epoch's length). With ``lr_schedule`` (:func:`pipeline.train.schedule.warmup_cosine`),
    moves the cosine's end, after each epoch from the second on (the first one's time
    includes tracing), to the last epoch that fits (:func:`epochs_that_fit`); no epoch
    runs past that end.

    Attributes:
        end: the epoch the learning rate ends at (``epochs`` unless moved).
        moved: the end moved after the last epoch.
        stopped: the budget stopped training.
    """

    def __init__(self, budget_s: float, epochs: int, lr_schedule=None, steps_per_epoch: int = 0):
        super().__init__()
        self.budget_s, self.epochs, self.lr_schedule, self.steps_per_epoch = (
            budget_s, epochs, lr_schedule, steps_per_epoch)
        self.end, self.moved, self.stopped = epochs, False, False

    def on_train_begin(self, logs=None):
        self.t0 = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.moved = time.perf_counter(), False

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.start
        if self.lr_schedule is not None and epoch:
            end = epochs_that_fit(epoch + 1, time.perf_counter() - self.t0, seconds, self.budget_s, self.end)
            if end < self.end and self.lr_schedule.end_at(end * self.steps_per_epoch):
                self.end, self.moved = end, True
        if self.model.stop_training or epoch + 1 >= self.epochs:
            return
        if time.perf_counter() - self.t0 + round(seconds, 2) > self.budget_s or epoch + 1 >= self.end:
            self.stopped = self.model.stop_training = True


class EpochRecord(keras.callbacks.Callback):
    """Each epoch's figures (:data:`HISTORY_KEYS`; ``lr`` is the rate of its first step),
    its wall time, the best epoch by validation top-1, and the progress line
    ``[label] epoch i/N  loss ...  (s)``, noting a new best under ``plan.auto`` and a
    learning-rate end that ``budget`` moved.

    Attributes:
        history: per key of :data:`HISTORY_KEYS`, one value per epoch.
        epoch_seconds: wall time per epoch (apart: not the same on a rerun).
        best, best_epoch: the best validation top-1 and its epoch (1-based; 0: none yet).
    """

    def __init__(self, label: str, plan: Plan, lr_schedule=None, budget: Optional[TimeBudget] = None,
                 log: Log = print):
        super().__init__()
        self.label, self.plan, self.lr_schedule, self.budget, self.log = label, plan, lr_schedule, budget, log

    def on_train_begin(self, logs=None):
        self.history: Dict[str, List[float]] = {k: [] for k in HISTORY_KEYS}
        self.epoch_seconds: List[float] = []
        self.best, self.best_epoch = -1.0, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()
        # The rate of the epoch's first step (the optimizer's own attribute holds the last
        # step's, from before a budget moved the cosine's end).
        optimizer = self.model.optimizer
        self.lr = (float(self.lr_schedule(optimizer.iterations)) if self.lr_schedule is not None
                   else float(np.asarray(optimizer.learning_rate)))

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.start
        for k in HISTORY_KEYS[:-1]:
            self.history[k].append(float(logs[k]))
        self.history["lr"].append(self.lr)
        self.epoch_seconds.append(round(seconds, 2))
        note = ""
        if logs["val_accuracy"] > self.best:
            self.best, self.best_epoch = float(logs["val_accuracy"]), epoch + 1
            note = "  (best)" if self.plan.auto else ""
        if self.budget is not None and self.budget.moved:
            note += f"  (budget: learning rate ends at epoch {self.budget.end})"
        self.log(progress_line(self.label, epoch, self.plan.epochs, logs, seconds, note))
