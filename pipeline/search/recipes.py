"""The recipes a search builds: a candidate's short proxy recipe and its full chosen recipe."""

import dataclasses
from pathlib import Path
from typing import Optional, Union

import yaml

from pipeline.recipe.schema import Recipe
from pipeline.store.atomic import atomic_write_text
from pipeline.search.space import Arch, Budget, Candidate, check_variant


def proxy_recipe(recipe: Recipe, arch: Union[Arch, Candidate], epochs: Optional[int] = None) -> Recipe:
    """The proxy schedule of ``arch``: float training only, short (``epochs``, default
    ``search.proxy_epochs``), no devices or budgets."""
    r = dataclasses.replace
    s = recipe.search
    data = recipe.data if not s.proxy_train_samples else r(recipe.data, train_samples=s.proxy_train_samples)
    return r(recipe, name=f"{recipe.name}-proxy", data=data, model=r(recipe.model, **arch.model),
             train=r(recipe.train, epochs=epochs or s.proxy_epochs),
             prune=r(recipe.prune, enabled=False), cluster=r(recipe.cluster, enabled=False),
             qat=r(recipe.qat, enabled=False),
             convert=r(recipe.convert, variants=("float32",)),
             devices=r(recipe.devices, targets=()), budgets={}, deploy_variant="float32").validate()


def chosen_recipe(recipe: Recipe, arch: Union[Arch, Candidate], device: str, variant: str, budget: Budget) -> Recipe:
    """The full recipe of ``arch`` on ``device``: its model, the device as the only
    target, ``variant`` deployed and the budgets as recipe budgets (checked by the build).

    Raises:
        ConfigError: ``variant`` is not one the recipe builds.
    """
    r = dataclasses.replace
    check_variant(variant, recipe)
    budgets = {k: dict(v) for k, v in recipe.budgets.items()}
    budgets.setdefault("max_latency_ms", {})[device] = budget.latency_ms
    if budget.memory_mb is not None:
        budgets.setdefault("max_memory_mb", {})[device] = budget.memory_mb
    if budget.size_kb is not None:
        budgets.setdefault("max_size_kb", {})[variant] = budget.size_kb
    return r(recipe, name=f"{recipe.name}-{device}",
             model=r(recipe.model, **arch.model), devices=r(recipe.devices, targets=(device,)), budgets=budgets,
             deploy_variant=variant).validate()


def recipe_yaml(recipe: Recipe, header: str = "") -> str:
    """A recipe as YAML, loadable with ``load_recipe``; ``header`` becomes leading comments."""
    lines = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return lines + yaml.safe_dump(recipe.to_dict(), sort_keys=False)


def search_command(recipe: Recipe, device: str, budget: Budget, variant: str) -> str:
    """The ``mobile-model search`` command line that repeats this search (for chosen.yaml)."""
    flags = f"--latency-ms {budget.latency_ms:g}"
    if budget.memory_mb is not None:
        flags += f" --memory-mb {budget.memory_mb:g}"
    if budget.size_kb is not None:
        flags += f" --size-kb {budget.size_kb:g}"
    if recipe.search.space != "grid":
        flags += f" --space {recipe.search.space}"
    if recipe.search.time_budget_s:
        flags += f" --time-budget-s {recipe.search.time_budget_s:g}"
    return f"mobile-model search {recipe.name} --device {device} {flags} --variant {variant}"


def write_chosen(recipe: Recipe, device: str, variant: str, budget: Budget, row, best, root: Path):
    """Writes ``root/chosen.yaml``, the full recipe of the search table row ``row`` whose
    finalist build ``best`` was chosen; returns (recipe, path)."""
    arch = Arch(row["candidate"], dict(row["model"]))
    chosen = chosen_recipe(recipe, arch, device, variant, budget)
    path = root / "chosen.yaml"
    what = arch.name
    if arch.model.get("genotype"):
        from models.genotype import Genotype

        what += f" ({Genotype.from_dict(arch.model['genotype']).text()})"
    atomic_write_text(path, recipe_yaml(chosen, (
        f"mobile-model build {path}\n\n"
        f"Chosen by `{search_command(recipe, device, budget, variant)}`:\n"
        f"{what}, estimated {row['latency_ms']:.3f} ms, "
        f"{row['memory_mb']:.2f} MiB, {row['size_kb']:.1f} KiB on {device} (random-weight run);\n"
        f"{variant} top-1 {best['test_top1']:.2f}% (test) after the full recipe.")))
    return chosen, path
