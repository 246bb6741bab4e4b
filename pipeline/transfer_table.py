"""Scratch against transfer with few images per class: one build of each per N, one table.

For each N, the recipe is built twice with ``data.train_per_class: N``: from
``model.init`` (``transfer.choose: transfer``, so that the row is the transferred
model whatever the recipe chooses) and from random weights (``model.init: null``,
the float ``train`` stage with the recipe's ``train`` schedule). The table also says
which of the two a build with ``transfer.choose: best`` keeps (the higher validation
top-1) and what that model scores. Everything else — data
splits, QAT, conversion, devices — is the recipe's, so validation and test images
are the same in every row. Builds go to ``<out>/<recipe>-n<N>-<transfer|scratch>``
and are cached like any build: a rerun only redoes what changed. A build whose
quantized model fails conversion validation (a model left at chance by too few
images does) is a row that says so, with its float top-1.
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from pipeline.errors import Log
from pipeline.errors import ConfigError, ConversionMismatchError
from pipeline.recipe.schema import Recipe
from pipeline.summary import float_stage_name
from pipeline.table import Table

MODES = ("scratch", "transfer")


@dataclass(frozen=True)
class FewShotRow:
    """One build of the table: N, scratch or transfer, its float and deploy-variant top-1
    (None, with ``refused`` saying why, when conversion validation refused the variant)."""

    per_class: int
    mode: str
    float_top1: float
    float_val_top1: Optional[float]
    deploy_top1: Optional[float]
    deploy_variant: str
    device_top1: Optional[float]
    device: Optional[str]
    root: str
    refused: str = ""


def fewshot_recipe(recipe: Recipe, per_class: int, mode: str) -> Recipe:
    """``recipe`` with N training images per class, from its ``model.init`` or from scratch."""
    r = dataclasses.replace
    init = recipe.model.init if mode == "transfer" else None
    return r(recipe, name=f"{recipe.name}-n{per_class}-{mode}", data=r(recipe.data, train_per_class=per_class),
             model=r(recipe.model, init=init), transfer=r(recipe.transfer, choose="transfer")).validate()


def fewshot_table(recipe: Recipe, per_class: Sequence[int], out: Path, run_devices: bool = False,
                  log: Log = print) -> List[FewShotRow]:
    """Builds the recipe at each N per class, from scratch and by transfer.

    Raises:
        ConfigError: the recipe has no ``model.init``.
    """
    from pipeline.build import build

    if not recipe.model.init:
        raise ConfigError("recipe.model.init: the scratch/transfer table needs a recipe that starts from weights")
    rows = []
    for n in per_class:
        for mode in MODES:
            r = fewshot_recipe(recipe, n, mode)
            log(f"[fewshot] N={n} {mode}: building {r.name}")
            root = Path(out) / r.build_name
            try:
                result = build(r, out=root, log=log, run_devices=run_devices)
            except ConversionMismatchError as exc:
                log(f"[fewshot] N={n} {mode}: {exc}")
                rows.append(FewShotRow(n, mode, *_float_top1(root), None, r.deploy_variant, None, None, str(root),
                                       str(exc)))
                continue
            s = result.summary
            dev = next(iter(s.devices), None)
            found = s.device(dev) if dev else None
            rows.append(FewShotRow(n, mode, s.float_top1, s.float_val_top1, s.variants[s.deploy_variant].top1,
                                   s.deploy_variant,
                                   found.top1 if found is not None else None, dev, str(result.root)))
    return rows


def fewshot_markdown(rows: Sequence[FewShotRow]) -> str:
    """The table: per N, scratch and transfer top-1 (float, deploy variant, device) and the gain."""
    variant = rows[0].deploy_variant if rows else "int8"
    device = next((r.device for r in rows if r.device), None)
    headers = ["images per class", "scratch float %", "transfer float %", f"scratch {variant} %",
               f"transfer {variant} %", f"gain ({variant})", f"transfer float -> {variant}",
               f"kept by choose: best (validation top-1), its {variant} %"]
    if device:
        headers += [f"scratch {device} %", f"transfer {device} %"]
    by = {(r.per_class, r.mode): r for r in rows}
    cells = []
    for n in sorted({r.per_class for r in rows}):
        s, t = by[(n, "scratch")], by[(n, "transfer")]
        kept = kept_by_best(t, s)
        cells.append([f"{n}", f"{s.float_top1:.1f}", f"{t.float_top1:.1f}", _deploy(s), _deploy(t),
                      _diff(t.deploy_top1, s.deploy_top1), _diff(t.deploy_top1, t.float_top1),
                      "-" if kept is None else f"{kept.mode} ({kept.float_val_top1:.1f} val): {_deploy(kept)}"]
                     + ([_pct(s.device_top1), _pct(t.device_top1)] if device else []))
    return "\n".join(Table(headers, cells, "r" * len(headers)).markdown())


def kept_by_best(transfer: FewShotRow, scratch: FewShotRow) -> Optional[FewShotRow]:
    """The row a build with ``transfer.choose: best`` keeps: the higher validation top-1,
    ties to transfer (None when a build did not record it)."""
    if transfer.float_val_top1 is None or scratch.float_val_top1 is None:
        return None
    return transfer if transfer.float_val_top1 >= scratch.float_val_top1 else scratch


def _deploy(row: FewShotRow) -> str:
    return "refused (int8 disagrees with float)" if row.refused else f"{row.deploy_top1:.1f}"


def _diff(a: Optional[float], b: Optional[float]) -> str:
    return "-" if a is None or b is None else f"{a - b:+.1f}"


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.1f}"


def _float_top1(root: Path) -> Tuple[float, Optional[float]]:
    """The float model's test and validation top-1 from a build's manifest (that build
    stopped before its summary)."""
    stages = json.loads((root / "manifest.json").read_text())["stages"]
    metrics = stages[float_stage_name(stages)]["metrics"]
    return float(metrics["test_top1"]), metrics.get("val_top1")
