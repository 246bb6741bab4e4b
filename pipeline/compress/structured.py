"""The ``channels`` stage: device-aware channel pruning, then a full fine-tune.

    load float -> schedule (pipeline.compress.netadapt: thin step by step until the
    target's budget is met) -> fine-tune the thinned model (the one runner,
    pipeline.compress.runner.fine_tune; ``prune.epochs: auto``: until validation
    top-1 stops improving, best epoch restored, pipeline.train.schedule.recovery_plan)
    -> save (.h5)

The result is a plain float model of the same family with fewer channels; QAT,
clustering, every variant and the device matrix take it as they take the float model.
Its metrics hold the schedule's steps and a per-layer table (channels and MACs
before and after) for the report.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

from pipeline.compress.runner import Facts, Log, Technique, fine_tune
from pipeline.recipe.schema import Recipe
from pipeline.train.schedule import Plan


@dataclass(frozen=True)
class ThinnedFineTune(Technique):
    """Fine-tunes an already thinned model: nothing to wrap or strip; measures its layers.

    ``auto``: stop once validation top-1 has not improved for ``patience`` epochs and keep
    the best epoch's weights (``epochs`` is then the cap).
    """

    epochs: int
    learning_rate: float
    before: Any  # the per-layer MACs and widths of the unpruned model
    label: str = "channels"
    auto: bool = False
    patience: int = 0

    def plan(self) -> Plan:
        return Plan(self.epochs, self.auto, self.patience if self.auto else 0)

    def wrap(self, model, steps: int):
        return model, {"steps": steps}

    def describe(self, steps: int, facts: Facts) -> str:
        if self.auto:
            return (f"fine-tuning the thinned model until validation top-1 stops improving "
                    f"(patience {self.patience}, at most {self.epochs} epochs, {steps} steps)")
        return f"fine-tuning the thinned model, {steps} steps"

    def measure(self, saved, facts: Facts) -> Dict:
        from models.macs import count_macs, count_params

        return {"layers": layer_table(self.before, architecture(saved)), "macs": int(count_macs(saved)),
                "params": int(count_params(saved))}

    def summary(self, metrics: Dict) -> str:
        return f"{metrics['macs']:,} MACs ({metrics['macs_fraction']:.1%} of the float model)" \
            if "macs_fraction" in metrics else f"{metrics['macs']:,} MACs"


def architecture(model) -> Dict[str, Any]:
    """Per layer: MACs; per channel group: width. Plain data (JSON)."""
    from models.macs import layer_macs

    from pipeline.compress.channels import widths

    return {"macs": layer_macs(model), "widths": widths(model)}


def layer_table(before: Dict[str, Any], after: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One row per layer with MACs: MACs and (for a group's producer) channels, before and after."""
    total_b = sum(before["macs"].values())
    total_a = sum(after["macs"].values())
    rows = []
    for name, macs in before["macs"].items():
        a = after["macs"].get(name, 0)
        rows.append({"layer": name, "channels_before": before["widths"].get(name),
                     "channels_after": after["widths"].get(name), "macs_before": macs, "macs_after": a,
                     "share_before": macs / total_b, "share_after": a / total_a if total_a else 0.0})
    return rows


def schedule_config(recipe: Recipe, float_macs: int):
    """The schedule the recipe asks for (target, criterion, step, seed)."""
    from pipeline.compress.netadapt import ScheduleConfig, Target

    p = recipe.prune
    if p.target_macs is not None:
        target = Target("macs", float(p.target_macs * float_macs))
    else:
        target = Target("latency_ms", float(p.target_latency_ms), p.target_device, recipe.devices.threads)
    return ScheduleConfig(target=target, criterion=p.criterion, step=float(p.step), seed=recipe.seed,
                          batch_size=recipe.train.batch_size, learning_rate=p.learning_rate)


def channel_prune_model(recipe: Recipe, splits, src: Path, out: Path, log: Log = print) -> Dict:
    """Channel-prunes the float Keras model at ``src`` to the recipe's target; writes ``out``.

    The schedule's steps are kept in ``<out stem>-steps/`` (resumable); the thinned
    model is then fine-tuned at ``recipe.prune.learning_rate`` for ``recipe.prune.epochs``
    epochs, or under ``auto`` until validation top-1 stops improving
    (:func:`pipeline.train.schedule.recovery_plan`).

    Returns:
        metrics: ``target`` (kind, budget, device), ``start``/``end`` (cost figures of the
        unpruned and scheduled architectures), ``steps`` (one record per step: layer,
        channels, cost before/after, one-shot and recovered val top-1, every proposal,
        the probes that bisected the last step's width),
        ``steps_run``, ``layers`` (per-layer channels/MACs before and after), ``macs``,
        ``macs_fraction``, ``params``, ``schedule_s``, then the runner's figures
        (``val_top1``, ``test_top1``, ``history``, ``best_epoch``; under ``auto`` ``plan``,
        ``stopped``, ``restored``...).

    Raises:
        BudgetExceededError: the budget cannot be met by thinning.
        DeviceUnavailableError, RuntimeIncompatibleError: the device cost could not be measured.
    """
    import time
    from dataclasses import asdict

    from models.macs import count_macs
    from pipeline.compress.netadapt import run_schedule
    from pipeline.store.atomic import sha256_file
    from pipeline.train.fit import setup_tensorflow
    from pipeline.train.keras_io import load_keras, save_keras
    from pipeline.train.schedule import recovery_plan

    setup_tensorflow(recipe.seed, recipe.train.logical_devices)
    model = load_keras(src)
    before = architecture(model)
    float_macs = int(count_macs(model))
    cfg = schedule_config(recipe, float_macs)
    work = out.parent / f"{out.stem}-steps"
    t0 = time.monotonic()
    thinned, sched = run_schedule(model, splits, cfg, work, sha256_file(src), log)
    schedule_s = time.monotonic() - t0
    scheduled = work / "scheduled.h5"
    save_keras(thinned, scheduled)
    plan = recovery_plan(recipe.prune.epochs)
    technique = ThinnedFineTune(epochs=plan.epochs, learning_rate=recipe.prune.learning_rate, before=before,
                                auto=plan.auto, patience=plan.patience)
    metrics = fine_tune(recipe, splits, scheduled, out, technique, log)
    metrics.update(target=asdict(cfg.target), criterion=cfg.criterion, schedule_s=round(schedule_s, 1),
                   macs_fraction=metrics["macs"] / float_macs, float_macs=float_macs, **sched)
    log(f"[channels] {len(sched['steps'])} steps ({sched['steps_run']} run now, {schedule_s:.0f} s); "
        f"{metrics['macs']:,} of {float_macs:,} MACs ({metrics['macs_fraction']:.1%})")
    return metrics
