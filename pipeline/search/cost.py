"""Tier 1 of the search: a candidate's cost on the device, from one emulated run.

The candidate is built with random weights, converted like the chosen variant and
run once on the device's emulated core (:mod:`pipeline.latency.reference`).
Its hot blocks and the graph's bytes give the estimated latency (the device's
pipeline model, :mod:`pipeline.latency.estimate`), the
guest's tensors give the memory estimate, the file gives the size. int8
instruction counts depend on the architecture, not on the weights, so one entry
per architecture and core serves every search (kept in the latency cache,
``search/``).
"""

from typing import Any, Dict

from pipeline.devices.profiles import DeviceProfile, get_device
from pipeline.latency.device_cost import COST_VERSION, price, run_cost
from pipeline.latency.reference import ModelSpec, build_tflite, cached_entry, has_entry, noop, run_key, run_reference
from pipeline.pool import Needs, connected, run_job
from pipeline.recipe.schema import GENOTYPE_FAMILY, Recipe
from pipeline.search.space import SEARCH_VARIANTS, Candidate, check_variant
from pipeline.errors import Log




def candidate_spec(recipe: Recipe, cand: Candidate, classes: int, variant: str) -> ModelSpec:
    """The reference model standing for ``cand``'s ``variant``: the recipe's channels and stem stride."""
    return ModelSpec(cand.family, cand.alpha, cand.input_size, classes, SEARCH_VARIANTS[variant],
                     channels=recipe.model.channels, first_stride=recipe.model.first_stride)


#: What a cost emulation declares as a job on a Ray cluster: one core, and TensorFlow
#: converting the random-weight model beside the emulated run.
COST_NEEDS = Needs(cpus=1, memory_mb=3072)


def measure_cost(spec: ModelSpec, profile: DeviceProfile, log: Log = noop) -> Dict[str, Any]:
    """One emulated run of ``spec``'s random-weight file: counts, memory, size (not cached).

    On a Ray cluster this process joined (``--ray``), the conversion and the run are a job
    of the cluster (:func:`cost_job`); the result is the same data either way."""
    if connected() is not None:
        log(f"[search] emulating {spec.label} on {profile.qemu_cpu} ({profile.runtime}) on the Ray cluster")
        return run_job(cost_job, spec, profile, name=f"cost/{profile.name}/{spec.label}", needs=COST_NEEDS)
    build_tflite(spec, log)  # before the message: converting is its own step
    log(f"[search] emulating {spec.label} on {profile.qemu_cpu} ({profile.runtime})")
    res, path = run_reference(spec, profile, log)
    return run_cost(res, path)


def cost_job(spec: ModelSpec, profile: DeviceProfile) -> Dict[str, Any]:
    """Job: :func:`measure_cost` on the node that runs it (its own caches of converted files)."""
    from pipeline.native import tf_environment

    tf_environment()
    return measure_cost(spec, profile)  # a worker joins no cluster: it measures where it runs


def candidate_cost(recipe: Recipe, cand: Candidate, device: str, variant: str, classes: int,
                   log: Log = noop) -> Dict[str, Any]:
    """The cost of ``cand`` on ``device``: latency, memory and size of its ``variant``.

    The emulated run is cached per architecture, core and runtime (``cached`` in the
    result says whether this call ran one); the latency is recomputed from the
    cached block profile with the current parameters
    (:func:`pipeline.latency.params.params_file`) at ``recipe.devices.threads``.

    Args:
        recipe: gives input channels, stem stride and threads.
        variant: a key of :data:`SEARCH_VARIANTS`.
        classes: output classes of the data set.

    Returns:
        ``{"loaded", "latency_ms", "memory_mb", "size_kb", "instructions", "cached", ...}``;
        a model the device's runtime cannot load has ``loaded`` False and no figures.

    Raises:
        ConfigError: unknown device or variant, or a bad candidate.
        DeviceUnavailableError: the emulated run failed.
    """
    check_variant(variant)
    return spec_cost(candidate_spec(recipe, cand, classes, variant), cand.name, device, variant,
                     recipe.devices.threads, log)


def candidate_cost_cached(recipe: Recipe, cand: Candidate, device: str, variant: str, classes: int) -> bool:
    """Whether :func:`candidate_cost` of ``cand`` would come from the cache (nothing is run)."""
    check_variant(variant)
    spec, profile = candidate_spec(recipe, cand, classes, variant), get_device(device)
    return has_entry("search", spec, profile, _cost_key(spec, profile))


def genotype_cost(recipe: Recipe, genotype, input_size: int, device: str, variant: str, classes: int,
                  log: Log = noop) -> Dict[str, Any]:
    """:func:`candidate_cost` of a block-level genotype (:class:`models.genotype.Genotype`
    or its dict) at ``input_size``, with the recipe's channels, stem stride and threads.
    The result's ``candidate`` is ``<genotype key>-<input size>``."""
    check_variant(variant)
    spec = genotype_spec(genotype, input_size, classes, SEARCH_VARIANTS[variant], recipe.model.channels,
                         recipe.model.first_stride)
    return spec_cost(spec, f"{spec.genotype_obj().key()}-{input_size}", device, variant, recipe.devices.threads,
                     log)


def genotype_spec(genotype, input_size: int, classes: int, numeric: str, channels: int,
                  first_stride: int) -> ModelSpec:
    """The reference model of a genotype (``numeric``: "int8", "int8-qat" or "float32")."""
    from models.genotype import Genotype

    return ModelSpec(GENOTYPE_FAMILY, 1.0, input_size, classes, numeric, channels=channels,
                     first_stride=first_stride, genotype=Genotype.from_dict(genotype).json())


def _cost_key(spec: ModelSpec, profile: DeviceProfile) -> Dict[str, Any]:
    return {"run": run_key(spec, profile), "cost_version": COST_VERSION}


def spec_cost(spec: ModelSpec, name: str, device: str, variant: str, threads: int,
              log: Log = noop) -> Dict[str, Any]:
    """The cost of reference model ``spec`` on ``device`` at ``threads``, labelled ``name``
    (one emulated run, cached)."""
    profile = get_device(device)
    key = _cost_key(spec, profile)
    # measure_cost is looked up at call time, so tests can stand in for the emulator.
    raw, cached = cached_entry("search", spec, profile, key, "cost", lambda: measure_cost(spec, profile, log))
    cost = {"candidate": name, "device": profile.name, "variant": variant, **raw,
            "cached": cached, "size_kb": raw["size_bytes"] / 1024}
    return price(cost, profile, spec.variant, threads)

