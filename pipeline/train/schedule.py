"""How long each stage trains, and the learning-rate curve it trains along.

* Float training (:func:`float_plan`): a fixed number of epochs, or ``auto``: until
  validation top-1 stops improving (the recipe's patience), capped by
  ``max_epochs`` and an optional time budget; the best epoch's weights are kept.
* Fine-tuning (:func:`finetune_epochs`): ``auto`` prune and QAT lengths follow the
  float epochs the build chose. Pruning gets at least :data:`MIN_PRUNE_EPOCHS`, so
  its polynomial schedule (which ends at 80% of its steps,
  :data:`pipeline.compress.prune.PRUNE_END_FRACTION`) always finishes with epochs to
  recover; QAT, ~3x as slow an epoch, gets a tenth of the float epochs.
* The fine-tune of a channel-pruned model (:func:`recovery_plan`): a fixed number of
  epochs, or ``auto``: chosen on validation like float training's ``auto`` (stop once
  validation top-1 has not improved for :data:`RECOVERY_PATIENCE` epochs, keep the
  best epoch's weights), at most :data:`RECOVERY_MAX_EPOCHS`. Unlike magnitude
  pruning it has no schedule that an earlier epoch would leave unfinished.
* The learning rate (:func:`warmup_cosine`): linear warm-up from 0, then cosine decay
  to 0 at the planned end (``max_epochs`` under auto). Under a time budget the end
  is brought forward to the last epoch that fits (:func:`epochs_that_fit`), so a
  budget that stops training early still ends on a low learning rate.
"""

import math
from dataclasses import dataclass
from typing import Optional

from pipeline.recipe.schema import AUTO, Recipe

#: Prune epochs: a third of the float epochs, from 4 to 10. Measured on sklearn digits
#: (default recipe, 50% sparsity): 4 prune epochs after 20 float ones took validation
#: top-1 from 98.5% to 96.7%: pruning needs time to recover. 4 is the shapes schedule.
MIN_PRUNE_EPOCHS, MAX_PRUNE_EPOCHS, PRUNE_FRACTION = 4, 10, 1 / 3
#: QAT epochs: a tenth of the float epochs, from 1 to 3 (a QAT epoch costs ~3 float ones).
MIN_QAT_EPOCHS, MAX_QAT_EPOCHS, QAT_FRACTION = 1, 3, 0.1
#: Channel-pruning recovery under ``auto``: at most 4 epochs (the length ``auto`` gives a
#: prune fine-tune after a short float training, :data:`MIN_PRUNE_EPOCHS`), stopped once 2
#: epochs in a row bring no better validation top-1 (one epoch's dip can be noise).
RECOVERY_MAX_EPOCHS, RECOVERY_PATIENCE = 4, 2
#: Warm-up is at most this fraction of the planned steps.
MAX_WARMUP_FRACTION = 0.2


@dataclass(frozen=True)
class Plan:
    """How a fit runs: ``epochs`` (the fixed count, or the cap under ``auto``),
    ``auto`` (stop on no improvement and restore the best epoch), ``patience``,
    ``min_epochs`` (auto never stops earlier), ``time_budget_s`` (None: none),
    ``warmup_epochs``."""

    epochs: int
    auto: bool = False
    patience: int = 0
    min_epochs: int = 1
    time_budget_s: Optional[float] = None
    warmup_epochs: int = 0

    def to_dict(self) -> dict:
        return {"epochs": "auto" if self.auto else self.epochs, "max_epochs": self.epochs,
                "patience": self.patience if self.auto else None,
                "min_epochs": self.min_epochs if self.auto else None, "time_budget_s": self.time_budget_s,
                "warmup_epochs": self.warmup_epochs}


def float_plan(recipe: Recipe) -> Plan:
    """The float training plan of ``recipe`` (``train.epochs`` unset: auto unless ``shapes``)."""
    t = recipe.train
    epochs = t.epochs_for(recipe.data.dataset)
    if epochs == AUTO:
        return Plan(t.max_epochs, True, t.patience, min(t.min_epochs, t.max_epochs), t.time_budget_s,
                    t.warmup_epochs)
    return Plan(int(epochs), False, 0, 1, t.time_budget_s, t.warmup_epochs)


def finetune_epochs(asked, float_epochs: Optional[int], kind: str) -> int:
    """The epochs of a fine-tune stage (``kind``: ``prune`` or ``qat``).

    Args:
        asked: the recipe's ``prune.epochs``/``qat.epochs``: a number, or ``"auto"``.
        float_epochs: the epochs float training ran (None when unknown: the minimum).
    """
    if asked != AUTO:
        return int(asked)
    lo, hi, fraction = ((MIN_PRUNE_EPOCHS, MAX_PRUNE_EPOCHS, PRUNE_FRACTION) if kind == "prune"
                        else (MIN_QAT_EPOCHS, MAX_QAT_EPOCHS, QAT_FRACTION))
    if not float_epochs:
        return lo
    return max(lo, min(hi, math.ceil(float_epochs * fraction)))


def recovery_plan(asked) -> Plan:
    """The fine-tune plan of a channel-pruned model.

    Args:
        asked: the recipe's ``prune.epochs``: a number (a fixed length), or ``"auto"``
            (early stopping on validation top-1 with the best epoch restored, at most
            :data:`RECOVERY_MAX_EPOCHS`; the cosine spans the cap).
    """
    if asked == AUTO:
        return Plan(RECOVERY_MAX_EPOCHS, True, RECOVERY_PATIENCE, 1)
    return Plan(int(asked))


def warmup_steps(plan_steps: int, steps_per_epoch: int, warmup_epochs: int) -> int:
    """Warm-up steps: ``warmup_epochs`` epochs, at most :data:`MAX_WARMUP_FRACTION` of the plan."""
    return min(warmup_epochs * steps_per_epoch, int(plan_steps * MAX_WARMUP_FRACTION))


def epochs_that_fit(done: int, spent_s: float, last_epoch_s: float, budget_s: float, cap: int) -> int:
    """The epoch a budgeted fit will end at: ``done`` epochs run in ``spent_s`` seconds,
    plus as many more of the last one's length as fit in the rest of ``budget_s``
    (the rule :func:`pipeline.train.fit.fit` stops by), at most ``cap``."""
    if last_epoch_s <= 0:
        return cap
    more = int(max(budget_s - spent_s, 0.0) // last_epoch_s)
    return max(done, min(cap, done + more))


def warmup_cosine(peak: float, total_steps: int, warmup: int):
    """A Keras learning-rate schedule: 0 -> ``peak`` linearly over ``warmup`` steps, then
    cosine decay to 0 at ``total_steps`` (and 0 after it).

    ``end_at(steps)`` moves the end earlier while training runs (the end is a
    variable, read by the compiled train step); it never moves it later."""
    import tensorflow as tf
    import tf_keras as keras

    class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self, peak, total, warm):
            self.peak, self.warm = float(peak), int(warm)
            self.total = tf.Variable(float(max(int(total), 1)), trainable=False, dtype=tf.float32,
                                     name="cosine_end_step")

        def end_at(self, steps: int) -> bool:
            """Ends the cosine at ``steps`` if that is earlier; True when it moved."""
            steps = float(max(int(steps), self.warm + 1, 1))
            if steps >= float(self.total.numpy()):
                return False
            self.total.assign(steps)
            return True

        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            warm = tf.constant(float(max(self.warm, 1)))
            rising = self.peak * step / warm
            span = tf.maximum(self.total - float(self.warm), 1.0)
            progress = tf.clip_by_value((step - self.warm) / span, 0.0, 1.0)
            decaying = self.peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
            return tf.where(step < self.warm, rising, decaying)

        def get_config(self):
            return {"peak": self.peak, "total": int(self.total.numpy()), "warm": self.warm}

    return WarmupCosine(peak, total_steps, warmup)
