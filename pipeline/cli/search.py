"""``mobile-model search``: the most accurate model within a device's budgets."""

import json
import math
import sys
from pathlib import Path

import click

from pipeline.cli.common import join_cluster, logger, ray_option
from pipeline.devices.profiles import DEVICES
from pipeline.errors import EXIT_GATE_FAILED
from pipeline.recipe.schema import SEARCH_SPACES
from pipeline.search.space import SEARCH_VARIANTS


@click.command()
@click.argument("recipe")
@click.option("--device", required=True, help=f"Target device: {', '.join(DEVICES.names())}.")
@click.option("--latency-ms", type=float, required=True, help="Estimated latency budget on the device.")
@click.option("--memory-mb", type=float, help="Peak memory budget (MiB) on the device.")
@click.option("--size-kb", type=float, help="File size budget (KiB) of the variant.")
@click.option("--variant", default="int8-qat", show_default=True, type=click.Choice(tuple(SEARCH_VARIANTS)),
              help="The deployed variant whose cost is budgeted.")
@click.option("--trials", type=click.IntRange(min=1), help="Candidates to look at [recipe search.trials].")
@click.option("--space", type=click.Choice(SEARCH_SPACES),
              help="Search space: the grid of hand-designed candidates or block-level genotypes "
                   "[recipe search.space].")
@click.option("--time-budget-s", type=click.FloatRange(min=0),
              help="Wall seconds of the whole block search, finalists and chosen build included; "
                   "0: none [recipe search.time_budget_s].")
@click.option("--smoke", is_flag=True, help="Tiny form of the recipe (few samples, one epoch).")
@click.option("--out", type=click.Path(path_type=Path), help="Search directory [build/search/<recipe>-<device>].")
@click.option("--no-final-build", is_flag=True, help="Write chosen.yaml but do not build it.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the final tables.")
@click.option("--json", "as_json", is_flag=True, help="Print the search result as JSON on stdout.")
@ray_option("the proxy trainings and the finalists' full recipes (search.concurrency at once), and the "
            "chosen build's device matrix")
def search(recipe, device, latency_ms, memory_mb, size_kb, variant, trials, space, time_budget_s, smoke, out,
           no_final_build, quiet, as_json, ray_address):
    """Find the most accurate model of RECIPE's search space that meets the budgets on DEVICE.

    Each candidate (family, width, input size) first gets its cost on the device from
    one emulated run (cached per architecture); only candidates within every budget
    are trained with the short proxy schedule, and the best few get the full recipe.
    With --space blocks the candidates are block-level genotypes: the per-block
    latency table screens each proposal, full emulation confirms it, and successive
    halving trains the promising ones longer; the hand-designed grid is priced and
    trained beside them as a reference.
    The chosen recipe is written as chosen.yaml and built. Rerunning the same command
    continues the stored study.

    Exit codes: 0 found and its build meets the budgets; 1 no candidate fits, or the
    chosen build missed a budget; 2 bad recipe or option; 3 device runtime unavailable,
    or the Ray cluster (--ray) unreachable or a job lost on it; 4 internal error.
    """
    from pipeline.errors import BudgetExceededError, ConfigError
    from pipeline.recipe.load import load_recipe
    from pipeline.search.pareto import pareto_table
    from pipeline.search.space import Budget
    from pipeline.search.study import search as run_search

    if device not in DEVICES.names():
        raise ConfigError(f"--device: unknown device {device!r}; valid: {', '.join(DEVICES.names())}")
    for flag, value in (("--latency-ms", latency_ms), ("--memory-mb", memory_mb), ("--size-kb", size_kb)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{flag}: expected a positive number, got {value!r}")
    budget = Budget(latency_ms, memory_mb, size_kb)
    r = load_recipe(recipe, smoke=smoke)
    if space is not None or time_budget_s is not None:
        import dataclasses

        changes = {k: v for k, v in (("space", space), ("time_budget_s", time_budget_s)) if v is not None}
        r = dataclasses.replace(r, search=dataclasses.replace(r.search, **changes)).validate()
    if variant not in r.convert.variants:
        raise ConfigError(f"--variant {variant!r} is not a variant recipe {r.name} builds; valid: "
                          f"{', '.join(v for v in r.convert.variants if v in SEARCH_VARIANTS)}")
    log = logger(quiet or as_json)
    join_cluster(ray_address, log)
    try:
        res = run_search(r, device, budget, variant=variant, trials=trials, out=out, log=log,
                         final_build=not no_final_build)
    except BudgetExceededError as e:
        if as_json and getattr(e, "result", None) is not None:
            # A script reads the outcome on stdout either way: here with chosen null and the reason.
            click.echo(json.dumps(e.result, indent=2, default=str))
        raise
    if as_json:
        click.echo(json.dumps(res.to_dict(), indent=2, default=str))
    else:
        click.echo(f"\n## search {r.build_name} on {device}: {res.root} ({res.wall_s:.1f} s, "
                   f"{res.trials_run} trial(s) run, {res.trials_stored} stored)\n")
        ph = res.phases
        click.echo(f"phases: trials {ph.get('trial_phase_s', 0):.0f} s"
                   + (f" (reference points {ph['reference_s']:.0f} s)" if "reference_s" in ph else "")
                   + f", finalists {ph.get('finalists_s', 0):.0f} s, final build {ph.get('final_build_s', 0):.0f} s\n")
        click.echo(pareto_table(res.rows, variant))
        c = res.chosen
        fin = c.get("finalist") or {}
        click.echo(f"\nchosen: {c['candidate']}: est. {c['latency_ms']:.3f} ms, {c['memory_mb']:.2f} MiB, "
                   f"{c['size_kb']:.1f} KiB; {variant} top-1 {fin.get('test_top1', float('nan')):.2f}% "
                   f"(test) -> {res.chosen_recipe}")
        if res.final:
            from pipeline.gate.budgets import BudgetCheck, format_budget_table

            click.echo(f"\n### budgets of the chosen build ({res.final['dir']})\n")
            click.echo(format_budget_table([BudgetCheck(b["budget"], b["subject"], b["limit"], b["measured"],
                                                        b["unit"]) for b in res.final["budgets"]]))
    if res.final and not res.final["budgets_ok"]:
        missed = [f"{b['budget']}[{b['subject']}]" for b in res.final["budgets"] if not b["ok"]]
        click.echo(f"error: the chosen build missed: {', '.join(missed)} ({res.final['dir']})", err=True)
        sys.exit(EXIT_GATE_FAILED)
