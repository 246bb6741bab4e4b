"""Click commands for devices: ``devices``, ``device run`` (emulated, or measured on a real
device with ``--target``) and ``device measured``.

Added to the main CLI group with ``main.add_command(devices)`` and
``main.add_command(device)``. Heavy imports (numpy, the runner) happen inside the
command bodies so that ``--help`` stays instant.
"""

from pathlib import Path
from typing import List, Optional, Tuple

import click

from pipeline.cli.common import echo_json, fail
from pipeline.cli.remote import measured
from pipeline.devices.profiles import DEVICES
from pipeline.errors import ConfigError, DataError, MobileModelError
from pipeline.summary import LatencyEstimate


@click.command("devices")
@click.option("--json", "as_json", is_flag=True, help="Print the profiles as JSON.")
def devices(as_json: bool) -> None:
    """List the emulated device profiles."""
    profiles = [DEVICES.get(name) for name in DEVICES.names()]
    if as_json:
        echo_json([p.to_dict() for p in profiles])
        return
    rows = [("device", "qemu cpu", "part", "cores", "GHz", "RAM MB", "runtime", "threads")]
    rows += [(p.name, p.qemu_cpu, p.cpu_part, str(p.cores), f"{p.clock_ghz:g}", str(p.ram_mb),
              f"{p.runtime} {p.runtime_version}", str(p.default_threads)) for p in profiles]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


@click.group("device")
def device() -> None:
    """Run models on emulated ARM devices (qemu-aarch64 + the device's ARM runtime), or
    measure them on real ones (--target ssh://... or adb://...)."""


device.add_command(measured)


def load_npz_inputs(path: Path, samples: Optional[int]):
    """(x, y) from an .npz holding arrays ``x`` (float images in [0, 1]) and ``y``.

    Raises:
        DataError: unreadable file or missing arrays.
    """
    import numpy as np

    try:
        with np.load(path) as data:
            missing = [k for k in ("x", "y") if k not in data.files]
            if missing:
                raise DataError(f"{path}: missing array(s) {', '.join(missing)}; "
                                f"found {', '.join(data.files) or 'none'} (expected x and y)")
            x, y = data["x"], data["y"]
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read as .npz ({e})") from None
    if len(x) != len(y):
        raise DataError(f"{path}: x has {len(x)} samples, y has {len(y)}")
    if samples is not None:
        x, y = x[:samples], y[:samples]
    return x.astype(np.float32), y


def recipe_inputs(model_path: Path, recipe_name: str, smoke: bool, samples: int):
    """The first ``samples`` images and labels of a recipe's test split, at the model's input shape."""
    from pipeline.data import load_dataset
    from pipeline.recipe.load import load_recipe
    from pipeline.tflite.reader import read_tflite

    recipe = load_recipe(recipe_name, smoke=smoke)
    model = read_tflite(model_path)
    shape = tuple(model.tensors[model.inputs[0]].shape[1:])
    if len(shape) != 3:
        raise ConfigError(f"{model_path.name}: expected an image input [N, H, W, C], got {list(shape)}")
    splits = load_dataset(recipe.data, shape, recipe.seed)
    return splits.x_test[:samples], splits.y_test[:samples]


def format_result(r, latency: LatencyEstimate) -> str:
    """What ``device run`` prints for a :class:`pipeline.devices.check.DeviceResult` and its estimate."""
    lines = [f"{r.device} ({r.qemu_cpu}, {r.runtime} {r.runtime_version}, "
             f"{r.threads} thread{'s' if r.threads != 1 else ''}): {Path(r.model).name}"]
    if not r.loaded:
        if r.load_error_op and r.load_error_op_version:
            first = r.load_error.splitlines()[0] if r.load_error else ""
            lines.append(f"  NOT LOADABLE [{r.load_error_op} v{r.load_error_op_version}]: {first}")
        else:
            lines.append(f"  NOT LOADABLE: {r.verdict}")
        if r.verdict_source != "device":
            lines.append(f"  (decided by the {r.verdict_source})")
        return "\n".join(lines)
    if r.top1 is not None:
        lines.append(f"  top-1               {r.top1:.2f}% on {r.samples} samples")
    a = r.agreement
    if a is not None:
        lines.append(f"  vs host ({a.host_reference}) {a.exact_count}/{a.samples} bit-exact, "
                     f"max |diff| {a.max_abs_diff:g} ({a.dtype}), top-1 agreement "
                     f"{a.top1_agreement:.4f}")
    lines.extend(output_rows(r))
    lines.append(f"  instructions/image  {r.instructions_median:,} (median"
                 f"{'' if r.counts_exact else ', NOT repeatable: threads > 1'})")
    classes = ", ".join(f"{k} {v:,}" for k, v in r.instructions_by_class.items())
    lines.append(f"    by class          {classes}")
    lines.append(f"  estimated latency   {latency.text()}")
    lines.append(f"  emulated wall       {r.wall_s_per_image:.3f} s/image (not latency)")
    m = r.memory
    lines.append(f"  memory (estimate)   {m.total_bytes / 2**20:.2f} MiB = weights "
                 f"{m.weights_bytes / 2**20:.2f} + activations {m.activation_bytes / 2**20:.2f}; "
                 f"{100 * m.fraction_of_ram:.2f}% of {m.ram_bytes // 2**20} MB RAM")
    return "\n".join(lines)


def output_rows(r) -> List[str]:
    """One row per model output: its comparison with the host over every sample."""
    if not r.outputs:
        return []
    width = max(len(o.name) for o in r.outputs)
    rows = [f"  outputs vs host     {len(r.outputs)} output{'s' if len(r.outputs) != 1 else ''}, "
            f"{r.samples} sample{'s' if r.samples != 1 else ''}"]
    for o in r.outputs:
        rows.append(f"    {o.name:<{width}}  {o.dtype:<7} {str(list(o.shape)):<16} "
                    f"{o.exact_count}/{o.samples} bit-exact, max |diff| {o.max_abs_diff:.3g}, "
                    f"max rel {o.max_rel_diff:.3g}")
    return rows


def model_inputs(model: Path, parsed, data_path, inputs_path, recipe_name, smoke, random_n, samples,
                 low: float, high: float):
    """``(x, y)`` for ``device run``: one array and labels (classifier data) or one array per input."""
    from pipeline.devices.model_io import load_named_inputs, random_inputs

    if data_path is not None:
        return load_npz_inputs(data_path, samples)
    if recipe_name is not None:
        return recipe_inputs(model, recipe_name, smoke, samples)
    if inputs_path is not None:
        return load_named_inputs(inputs_path, parsed, samples), None
    return random_inputs(parsed, random_n, low, high), None


@device.command("run")
@click.option("--device", "device_name", type=click.Choice(DEVICES.names()),
              help="Device profile to emulate (with --target: named beside the measurement).")
@click.option("--target", "target", metavar="URL",
              help="Measure on a real device instead: ssh://[USER@]HOST[:PORT] or adb://SERIAL.")
@click.option("--identity", type=click.Path(dir_okay=False, path_type=Path),
              help="With an ssh target: the private key (ssh -i).")
@click.option("--remote-python", default="python3", show_default=True,
              help="With an ssh target: the board's python (it needs numpy and ai-edge-litert or "
                   "tflite-runtime).")
@click.option("--timed-runs", "timed_runs", type=click.IntRange(min=1), default=50, show_default=True,
              help="With --target: timed inferences.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True,
              help="With --target: untimed inferences before the timed ones (after the first).")
@click.option("--cores", help="With --target: pin to these CPUs (taskset -c), e.g. 0-3.")
@click.option("--benchmark-model", "benchmark_model", type=click.Path(dir_okay=False, path_type=Path),
              help="With an adb target: TFLite's benchmark_model for the phone (remembered).")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", "data_path", type=click.Path(dir_okay=False, path_type=Path),
              help="An .npz with arrays x (float images in [0, 1]) and y (labels).")
@click.option("--recipe", "recipe_name",
              help="Use the test split of this recipe (YAML path or embedded name).")
@click.option("--smoke", is_flag=True, help="With --recipe: its smoke form.")
@click.option("--inputs", "inputs_path", type=click.Path(dir_okay=False, path_type=Path),
              help="An .npz with one array per model input, keyed by input tensor name "
                   "(samples first).")
@click.option("--random", "random_n", type=click.IntRange(min=1),
              help="Run N random inputs instead of data (no accuracy; seed 0).")
@click.option("--range", "value_range", type=(float, float), default=(0.0, 1.0), show_default=True,
              help="With --random: the float range [LOW, HIGH) of float and quantized inputs.")
@click.option("--samples", type=click.IntRange(min=1), default=100, show_default=True,
              help="Use at most this many samples of --data or --inputs.")
@click.option("--threads", type=click.IntRange(min=1),
              help="Interpreter threads (default: the profile's, or 1 with --target alone; counts repeat exactly "
                   "only with 1).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages.")
def device_run(device_name: Optional[str], model: Path, data_path: Optional[Path], inputs_path: Optional[Path],
               recipe_name: Optional[str], smoke: bool, random_n: Optional[int], value_range: Tuple[float, float],
               samples: int, threads: Optional[int], as_json: bool, quiet: bool, target: Optional[str],
               identity: Optional[Path], remote_python: str, timed_runs: int, warmup: int,
               cores: Optional[str], benchmark_model: Optional[Path]) -> None:
    """Run MODEL.tflite on an emulated device (--device) or measure it on a real one
    (--target), and check it against the host.

    Any model: every input gets random values (--random) or the arrays of --inputs; every
    output is compared with the host's. A model that the device's runtime does not load
    is a result (printed, with the op it lacks, custom ops included; ``loaded: false`` in
    JSON), exit 0; a model the host cannot read, or inputs that do not fit it, are bad
    input, exit 2. A real device that cannot be reached, or has no runtime, exits 3.
    """
    try:
        if target is None and device_name is None:
            raise ConfigError("give --device PROFILE (emulated) or --target URL (a real device), or both")
        if target is not None and target.startswith("adb://"):
            if any(v is not None for v in (data_path, inputs_path, recipe_name, random_n)):
                raise ConfigError("an adb target runs benchmark_model on its own random inputs: leave out "
                                  "--recipe, --data, --inputs and --random")
        elif sum(v is not None for v in (data_path, inputs_path, recipe_name, random_n)) != 1:
            raise ConfigError("give exactly one of --recipe RECIPE, --data NPZ, --inputs NPZ or --random N")
        if target is not None:
            from pipeline.cli.remote import run_on_target

            return run_on_target(model, target, device_name, identity, remote_python, threads, timed_runs,
                                 warmup, cores, benchmark_model,
                                 lambda parsed: model_inputs(model, parsed, data_path, inputs_path, recipe_name,
                                                             smoke, random_n, samples, *value_range),
                                 as_json, quiet)
        from pipeline.devices.check import run_device_check
        from pipeline.tflite.reader import read_tflite

        # An untrusted model: structure checked here, then loaded and run by the host
        # runtime in an isolated child, before any (slow) runtime build or emulated run.
        parsed = read_tflite(model)
        x, y = model_inputs(model, parsed, data_path, inputs_path, recipe_name, smoke, random_n, samples,
                            *value_range)
        profile = DEVICES.get(device_name)
        quiet = quiet or as_json
        # Inputs are checked against the model before any runtime sees them; the
        # pipeline's own interpreter runs the untrusted model in an isolated child.
        result = run_device_check(model, profile, x, y, threads=threads, untrusted=True,
                                  progress=None if quiet else (lambda m: click.echo(m, err=True)))
        from pipeline.latency.estimate import attach_latency

        data = result.to_dict()
        attach_latency(data, profile.name, result.threads)
        if as_json:
            echo_json(data)
        else:
            click.echo(format_result(result, LatencyEstimate.from_result(data)))
    except MobileModelError as e:
        fail(e)
