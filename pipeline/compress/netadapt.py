"""A device-aware channel-pruning schedule (NetAdapt, Yang et al. 2018), and the device cost it reads.

Each step proposes, for every prunable channel group (:mod:`pipeline.compress.channels`),
a thinner group that removes about ``step`` x the starting MACs (rounded to whole
multiples of :data:`GRANULARITY` channels), thins a copy of the model by the channel
importance criterion, and measures two things:

- accuracy: the loss and top-1 of the thinned copy on a fixed slice of the
  validation split (no fine-tuning per proposal);
- cost: the *device* cost of that exact architecture: its int8 conversion run once
  on the emulated core, priced by the same estimate as every device figure
  (:func:`pipeline.latency.device_cost.run_cost` and :func:`pipeline.latency.device_cost.price`, the
  search's cost tier), cached per architecture, core and runtime; or its MACs when
  the target is a MACs fraction.

It keeps the proposal that loses least loss per unit of cost saved, fine-tunes it
briefly (``recover_batches`` batches) and records the step. It stops when the cost
is within the budget. The last step does not overshoot by a whole step: when the
kept proposal's cost is below the budget, its width is bisected between the
group's current width and the proposal's (whole multiples of :data:`GRANULARITY`
channels, at most log2 of their number probes, each priced like a proposal) for
the widest one that still meets the budget (:func:`bisect_width`). Steps are
written to a work folder as they finish (the model after each step and
``state.json``), so an interrupted schedule resumes at its last step, and the same
seed gives the same steps (each step's recovery reseeds every generator).
"""

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from pipeline.compress.channels import MIN_CHANNELS, Group, find_groups, thin_by_scores
from pipeline.errors import BudgetExceededError, Log
from pipeline.store.atomic import atomic_write_json, config_hash


# Channels are removed in multiples of this: XNNPACK's int8 kernels pack output
# channels by 8 (or 16), so a width between two multiples costs as much as the next one.
GRANULARITY = 8
# Validation images each proposal is scored on.
EVAL_IMAGES = 2000
# 2: the last step's width is bisected onto the budget; recovery reseeds every generator.
STATE_VERSION = 2


# -- device cost ----------------------------------------------------------------------

@dataclass(frozen=True)
class ArchitectureSpec:
    """Stands for a thinned model in the latency cache: its architecture's digest.

    int8 instruction counts depend on the architecture, not on the weights (the
    search's cost tier relies on the same fact), so the digest of the layer config
    is the cache key.
    """

    digest: str
    variant: str = "int8"

    @property
    def label(self) -> str:
        return f"channels-{self.digest[:12]}-{self.variant}"

    def key(self) -> Dict[str, Any]:
        import tensorflow as tf

        return {"architecture": self.digest, "variant": self.variant, "tensorflow": tf.__version__}


def architecture_digest(model) -> str:
    """sha256 of the model's layer config: the same for every model of that architecture."""
    import json

    return hashlib.sha256(json.dumps(model.get_config(), sort_keys=True, default=str).encode()).hexdigest()


def _measure(model, spec: ArchitectureSpec, profile, log: Log) -> Dict[str, Any]:
    from pipeline.latency.device_cost import measure_keras

    return measure_keras(model, spec.label, profile, log=log)


def device_cost(model, device: str, threads: int = 1, log: Log = print) -> Dict[str, Any]:
    """The int8 cost of ``model``'s architecture on ``device``, from one emulated run, cached.

    Returns:
        The search cost tier's entry (:func:`pipeline.latency.device_cost.price`): ``latency_ms``,
        ``latency_cycles``, ``instructions``, ``size_bytes``, ... and ``cached``.

    Raises:
        ConfigError: unknown device.
        RuntimeIncompatibleError: the device's runtime does not load the model.
        DeviceUnavailableError: the emulated run failed.
    """
    from pipeline.devices.profiles import get_device
    from pipeline.errors import RuntimeIncompatibleError
    from pipeline.latency.reference import cached_entry, run_key
    from pipeline.latency.device_cost import COST_VERSION, price

    profile = get_device(device)
    spec = ArchitectureSpec(architecture_digest(model))
    key = {"run": run_key(spec, profile), "cost_version": COST_VERSION}
    raw, cached = cached_entry("channels", spec, profile, key, "cost", lambda: _measure(model, spec, profile, log))
    if not raw["loaded"]:
        raise RuntimeIncompatibleError(f"{device} does not load the thinned model: {raw['load_error']}")
    return price(dict(raw, cached=cached), profile, "int8", threads)


# -- the schedule -----------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """What the schedule drives down: MACs, or estimated latency (ms) on a device."""

    kind: str              # "macs" or "latency_ms"
    budget: float          # the cost to reach (MACs or ms)
    device: Optional[str] = None
    threads: int = 1

    def cost(self, model, log: Log) -> Tuple[float, Dict[str, Any]]:
        """(cost of ``model``, the figures behind it)."""
        from models.macs import count_macs

        macs = int(count_macs(model))
        if self.kind == "macs":
            return float(macs), {"macs": macs}
        c = device_cost(model, self.device, self.threads, log)
        return float(c["latency_ms"]), {"macs": macs, "latency_ms": c["latency_ms"],
                                        "instructions": c["instructions"], "cycles": c.get("latency_cycles"),
                                        "size_bytes": c["size_bytes"], "cached": c["cached"]}


def channel_macs(model, group: Group) -> float:
    """MACs one channel of ``group`` costs: its filter, its depthwise/SE work and its consumers' inputs."""
    from models.macs import layer_macs

    per = layer_macs(model)
    total = 0.0
    for name in (group.producer, *group.coproducers, *group.members, *group.consumers):
        if name in per:
            total += per[name] / group.channels
    return total


def proposal_width(channels: int, per_channel: float, remove_macs: float) -> int:
    """The group's width after removing about ``remove_macs`` MACs: a multiple of
    :data:`GRANULARITY`, at least one step narrower, never below :data:`MIN_CHANNELS`
    (returns ``channels`` when the group cannot shrink)."""
    floor = max(MIN_CHANNELS, GRANULARITY)
    want = channels - math.ceil(remove_macs / max(per_channel, 1e-9))
    width = max(floor, (want // GRANULARITY) * GRANULARITY)
    if width >= channels:
        width = (channels - 1) // GRANULARITY * GRANULARITY
    return channels if width < floor else width


def bisect_width(channels: int, proposed: int, cost_of: Callable[[int], float],
                 budget: float) -> Tuple[int, List[Dict[str, Any]]]:
    """The widest width between ``proposed`` and ``channels`` whose cost meets ``budget``.

    The candidates are the multiples of :data:`GRANULARITY` strictly between the two:
    ``proposed`` is known to meet the budget and ``channels`` (the group's width now)
    not to. Cost falls as the width does, so a binary search finds the widest
    candidate that meets the budget in at most ``ceil(log2(candidates + 1))`` probes.

    Args:
        channels: the group's width now (its cost is above the budget).
        proposed: the proposal's width, a multiple of :data:`GRANULARITY` (its cost meets it).
        cost_of: width -> cost of the model with the group at that width.
        budget: the cost to meet.

    Returns:
        (the width, the probes in order: ``{"channels", "cost", "meets"}``); ``proposed``
        when no candidate meets the budget.
    """
    candidates = list(range(proposed + GRANULARITY, channels, GRANULARITY))
    lo, hi, probes = -1, len(candidates), []  # candidates[lo] meets (or proposed); candidates[hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        cost = float(cost_of(candidates[mid]))
        meets = cost <= budget
        probes.append({"channels": candidates[mid], "cost": cost, "meets": meets})
        lo, hi = (mid, hi) if meets else (lo, mid)
    return (candidates[lo] if lo >= 0 else proposed), probes


def evaluate_loss_top1(model, x: np.ndarray, y: np.ndarray) -> Tuple[float, float]:
    # Eager batches: a fresh model per proposal would pay for tracing predict each time.
    probs = np.concatenate([model(x[i:i + 500], training=False).numpy() for i in range(0, len(x), 500)])
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0))))
    return loss, float(np.mean(np.argmax(probs, axis=1) == y) * 100.0)


def recover_briefly(model, splits, batches: int, batch_size: int, learning_rate: float, seed: int) -> None:
    """A short fine-tune of the chosen proposal on a seeded draw of training images.

    Every generator (Python, NumPy, TensorFlow: dropout) is reseeded with ``seed``, so
    the step trains alike whatever ran before it (a resumed schedule, another stage).
    """
    import tf_keras as keras

    from pipeline.train.fit import build_training_state
    from pipeline.train.stream import train_dataset

    if batches <= 0:
        return
    keras.utils.set_random_seed(seed)
    n = min(len(splits.x_train), batches * batch_size)
    idx = np.random.default_rng(seed).choice(len(splits.x_train), n, replace=False)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy")
    build_training_state(model, one_hot=False)  # one trace of the step, not two
    model.fit(train_dataset(splits.x_train, splits.y_train, idx, batch_size), epochs=1, verbose=0)


@dataclass(frozen=True)
class ScheduleConfig:
    """How the schedule proceeds (its cache key, with the target and the source's hash)."""

    target: Target
    criterion: str
    step: float
    seed: int
    recover_batches: int = 100
    batch_size: int = 128
    learning_rate: float = 1e-3
    eval_images: int = EVAL_IMAGES
    max_steps: int = 40
    layers: Optional[Tuple[str, ...]] = None  # producers the schedule may shrink (None: every group)


def run_schedule(model, splits, cfg: ScheduleConfig, work: Path, source_sha: str,
                 log: Log = print) -> Tuple[Any, Dict[str, Any]]:
    """Thins ``model`` step by step until ``cfg.target``'s budget is met (see the module docstring).

    Args:
        model: the trained float model (not changed).
        splits: data splits (train for recovery, val for scoring).
        work: folder for the steps (``state.json``, ``stepNN.h5``); resumed from when its
            key matches.
        source_sha: sha256 of the source model file (part of the resume key).

    Returns:
        (the thinned model, ``{"steps": [...], "start": cost figures, "end": cost figures,
        "steps_run": how many this call ran}``).

    Raises:
        BudgetExceededError: no group can shrink further and the budget is still missed.
    """
    from pipeline.train.keras_io import load_keras, save_keras

    key = config_hash({"cfg": _plain(cfg), "source": source_sha, "version": STATE_VERSION})
    state_path = work / "state.json"
    x_eval, y_eval = splits.x_val[:cfg.eval_images], splits.y_val[:cfg.eval_images]
    state = _load_state(state_path, key)
    if state and state["steps"]:
        model = load_keras(work / state["steps"][-1]["model"])
        log(f"[channels] resuming after step {len(state['steps'])}")
    else:
        cost, fig = cfg.target.cost(model, log)
        loss, top1 = evaluate_loss_top1(model, x_eval, y_eval)
        state = {"key": key, "start": {"cost": cost, **fig, "loss": loss, "top1": top1}, "steps": []}
    macs0 = state["start"]["macs"]
    last = state["steps"][-1] if state["steps"] else state["start"]
    cost, loss = last["cost"], last["loss"]
    ran = 0
    log(f"[channels] start cost {state['start']['cost']:.4g} ({cfg.target.kind}), budget {cfg.target.budget:.4g}")
    while cost > cfg.target.budget:
        k = len(state["steps"]) + 1
        if k > cfg.max_steps:
            raise BudgetExceededError(f"channel pruning: {cfg.max_steps} steps left the cost at {cost:.4g}, "
                                      f"above the budget {cfg.target.budget:.4g}")
        proposals = _proposals(model, cfg, macs0 * cfg.step, x_eval, y_eval, cost, loss, log)
        if not proposals:
            raise BudgetExceededError(f"channel pruning: every layer is at its narrowest and the cost "
                                      f"{cost:.4g} is above the budget {cfg.target.budget:.4g}")
        best = min(proposals, key=lambda p: (p["score"], p["cost"], p["layer"]))
        probes: List[Dict[str, Any]] = []
        if best["cost"] < cfg.target.budget:
            best, probes = _land_on_budget(model, best, cfg, x_eval, y_eval, log)
        model = best.pop("model")
        recover_briefly(model, splits, cfg.recover_batches, cfg.batch_size, cfg.learning_rate, cfg.seed + k)
        loss_after, top1_after = evaluate_loss_top1(model, x_eval, y_eval)
        record = {"step": k, "layer": best["layer"], "channels_before": best["channels_before"],
                  "channels_after": best["channels_after"], "channels_proposed": best["channels_proposed"],
                  "cost_before": cost, "cost": best["cost"],
                  **{f: best[f] for f in ("macs", "latency_ms", "instructions", "cycles") if f in best},
                  "loss_oneshot": best["loss"], "top1_oneshot": best["top1"], "loss": loss_after,
                  "top1": top1_after, "score": best["score"], "model": f"step{k:02d}.h5",
                  "proposals": [{f: p[f] for f in ("layer", "channels_after", "cost", "loss", "score")}
                                for p in proposals], "probes": probes}
        save_keras(model, work / record["model"])
        state["steps"].append(record)
        atomic_write_json(state_path, state)
        ran += 1
        cost, loss = best["cost"], loss_after
        log(f"[channels] step {k}: {best['layer']} {best['channels_before']} -> {best['channels_after']}, "
            f"cost {record['cost_before']:.4g} -> {cost:.4g}, val top-1 {top1_after:.2f}% "
            f"(one-shot {best['top1']:.2f}%)")
    atomic_write_json(state_path, state)
    return model, {"steps": [{k: v for k, v in s.items() if k != "model"} for s in state["steps"]],
                   "start": state["start"], "end": dict(state["steps"][-1]) if state["steps"] else state["start"],
                   "steps_run": ran}


def _proposals(model, cfg: ScheduleConfig, remove_macs: float, x_eval, y_eval, cost: float, loss: float,
               log: Log) -> List[Dict[str, Any]]:
    """One thinner copy per group that can shrink, scored by loss gained per cost saved."""
    out = []
    for g in find_groups(model):
        if not g.bn:  # SE squeeze convs: tiny, and their channels have no BN scale to rank by
            continue
        if cfg.layers is not None and g.producer not in cfg.layers:
            continue
        width = proposal_width(g.channels, channel_macs(model, g), remove_macs)
        if width >= g.channels:
            continue
        thinned = thin_by_scores(model, {g.producer: width}, cfg.criterion)
        c, fig = cfg.target.cost(thinned, log)
        saved = cost - c
        if saved <= 0:
            continue
        p_loss, p_top1 = evaluate_loss_top1(thinned, x_eval, y_eval)
        out.append({"layer": g.producer, "channels_before": g.channels, "channels_after": width,
                    "channels_proposed": width, "cost": c,
                    **fig, "loss": p_loss, "top1": p_top1,
                    "score": max(p_loss - loss, 0.0) / saved, "model": thinned})
    return out


def _land_on_budget(model, best: Dict[str, Any], cfg: ScheduleConfig, x_eval, y_eval,
                    log: Log) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """``best`` (a proposal below the budget) at the widest width that still meets the
    budget (:func:`bisect_width`, each probe priced like a proposal), and the probes."""
    meeting: Dict[int, Tuple[Any, float, Dict[str, Any]]] = {}

    def cost_of(width: int) -> float:
        thinned = thin_by_scores(model, {best["layer"]: width}, cfg.criterion)
        c, fig = cfg.target.cost(thinned, log)
        if c <= cfg.target.budget:
            meeting[width] = (thinned, c, fig)
        return c

    width, probes = bisect_width(best["channels_before"], best["channels_after"], cost_of, cfg.target.budget)
    if width == best["channels_after"]:
        return best, probes
    thinned, c, fig = meeting[width]
    loss, top1 = evaluate_loss_top1(thinned, x_eval, y_eval)
    log(f"[channels] {best['layer']}: {best['channels_after']} channels would take the cost to "
        f"{best['cost']:.4g}; {width} meet the budget at {c:.4g} ({len(probes)} probes)")
    return {**best, "channels_after": width, "cost": c, **fig, "loss": loss, "top1": top1, "model": thinned}, probes


def _plain(cfg: ScheduleConfig) -> Dict[str, Any]:
    from dataclasses import asdict

    return asdict(cfg)


def _load_state(path: Path, key: str) -> Optional[Dict[str, Any]]:
    import json

    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    return state if state.get("key") == key else None
