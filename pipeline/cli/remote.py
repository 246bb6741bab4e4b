"""``device run --target``: measuring on a real board (ssh) or phone (adb), and
``device measured``, the list of stored measured points.

Attached by :mod:`pipeline.cli.devices`; heavy imports stay inside the functions.
"""

from pathlib import Path
from typing import List, Optional

import click

from pipeline.cli.common import echo_json, fail
from pipeline.errors import ConfigError, MobileModelError


def _ms(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    return f"{1000 * seconds:.3f} ms" if seconds >= 1e-3 else f"{1e6 * seconds:.1f} us"


def profile_line(name: str, m) -> str:
    """The emulated profile named beside the target: what it stands for, and where it differs."""
    from pipeline.devices.profiles import DEVICES

    p = DEVICES.get(name)
    differs = ("" if (p.runtime, p.runtime_version) == (m.runtime, m.runtime_version)
               else f"; the board ran {m.runtime} {m.runtime_version}")
    return (f"  profile             {p.name}: {p.description} ({p.runtime} {p.runtime_version}{differs}); "
            f"its emulated figures: mobile-model device run --device {p.name}")


def format_measurement(m) -> str:
    """What ``device run --target`` prints for a :class:`pipeline.devices.remote.measurement.Measurement`."""
    s = m.settings
    cores = "not pinned" if s.get("cores") is None else "cores " + ",".join(map(str, s["cores"]))
    lines = [f"{m.target} ({m.runtime} {m.runtime_version}, {s['threads']} thread"
             f"{'s' if s['threads'] != 1 else ''}, {cores}): {Path(m.model).name} [{m.number_format}]"]
    if m.profile:
        lines.append(profile_line(m.profile, m))
    d = m.device
    if d is not None:
        lines.append(f"  device              {d.model or '-'}; cpu {d.cpu or '-'}; {d.machine}, kernel {d.kernel}, "
                     f"{d.cpus or '?'} cpus, governor {d.governor or '-'}")
    if not m.loaded:
        lines.append(f"  NOT LOADABLE: {m.verdict}")
        return "\n".join(lines)
    t = m.timing
    lines += [f"  init (load+alloc)   {_ms(t.init_s)}",
              f"  first inference     {_ms(t.first_inference_s)}",
              f"  warm-up mean        {_ms(t.warmup_mean_s)} over {t.warmup_runs} run(s)",
              f"  inference           mean {_ms(t.mean_s)}, std {_ms(t.std_s)}, min {_ms(t.min_s)}, "
              f"max {_ms(t.max_s)} over {t.runs} runs (measured)",
              "  peak memory         " + ("not reported" if t.peak_rss_kib is None else
                                          f"{t.peak_rss_kib / 1024:.2f} MiB resident (the whole process)")]
    if m.top1 is not None:
        lines.append(f"  top-1               {m.top1:.2f}% on {m.samples} samples")
    if m.outputs:
        lines.append(f"  outputs vs host     ({m.host_reference}) {m.samples} sample(s)")
        width = max(len(o.name) for o in m.outputs)
        lines += [f"    {o.name:<{width}}  {o.dtype:<7} {o.exact_count}/{o.samples} bit-exact, max |diff| "
                  f"{o.max_abs_diff:.3g}" for o in m.outputs]
    elif m.loaded:
        lines.append("  outputs vs host     not compared (the tool feeds its own random inputs)")
    repeat = (f"--threads {s['threads']} --timed-runs {s['runs']} --warmup {s['warmup']}"
              + ("" if s.get("cores") is None else f" --cores {','.join(map(str, s['cores']))}")
              + (f" --remote-python {s['remote_python']}" if s.get("remote_python") else ""))
    lines.append(f"  settings            {repeat} (runtime {s['runtime']})")
    return "\n".join(lines)


def checked_inputs(parsed, x, y, source: str) -> List:
    """One array per model input, checked against the model (and the labels)."""
    import numpy as np

    from pipeline.devices.check import validate_inputs
    from pipeline.devices.model_io import validate_named_inputs

    if isinstance(x, np.ndarray):
        validate_inputs(parsed, x, y, source)
        return [x]
    xs = [np.asarray(a) for a in x]
    validate_named_inputs(parsed, xs, source)
    return xs


def run_on_target(model: Path, target_text: str, profile: Optional[str], identity: Optional[Path],
                  remote_python: str, threads: Optional[int], runs: int, warmup: int, cores: Optional[str],
                  benchmark_model: Optional[Path], inputs, as_json: bool, quiet: bool) -> None:
    """The body of ``device run --target``; ``inputs`` makes ``(x, y)`` (not called for adb)."""
    from pipeline.devices.remote import store
    from pipeline.devices.remote.target import AdbTarget, Settings, parse_cores, parse_target

    target = parse_target(target_text)
    say = None if quiet or as_json else (lambda m: click.echo(m, err=True))
    if threads is None and profile is not None:
        from pipeline.devices.profiles import DEVICES

        threads = DEVICES.get(profile).default_threads
    settings = Settings(threads=threads or 1, runs=runs, warmup=warmup,
                        cores=None if cores is None else parse_cores(cores),
                        remote_python=None if isinstance(target, AdbTarget) else remote_python).validate()
    if isinstance(target, AdbTarget):
        from pipeline.devices.remote.adb import measure_over_adb

        if identity is not None:
            raise ConfigError("--identity is for ssh:// targets (adb finds the device by its serial)")
        result = measure_over_adb(model, target, settings, benchmark_model, profile=profile, progress=say)
    else:
        if benchmark_model is not None:
            raise ConfigError("--benchmark-model is for adb:// targets (an ssh board runs the guest script)")
        from pipeline.devices.remote.ssh_run import measure_over_ssh
        from pipeline.tflite.reader import read_tflite

        parsed = read_tflite(model)
        x, y = inputs(parsed)
        xs = checked_inputs(parsed, x, y, model.name)
        result = measure_over_ssh(model, target, xs, settings, identity=identity, profile=profile, progress=say,
                                  y=y)
    if result.loaded:
        where = store.append(result)
        if say:
            say(f"stored in {where}")
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(format_measurement(result))


@click.command("measured")
@click.option("--model-sha256", "sha", help="Only the points of the model with this sha256 (a prefix will do).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def measured(sha: Optional[str], as_json: bool) -> None:
    """List the points measured on real devices (device run --target), oldest first."""
    try:
        from pipeline.devices.remote import store

        rows = [r for r in store.read_rows() if sha is None or r["model_sha256"].startswith(sha)]
        if as_json:
            echo_json(rows)
            return
        if not rows:
            click.echo(f"no measured points in {store.store_path()}")
            return
        cols = ("measured_at", "target", "device_model", "runtime", "runtime_version", "threads", "cores",
                "model", "number_format", "mean_ms", "std_ms", "peak_rss_mib", "outputs_agree")
        table = [cols] + [tuple(r[c] or "-" for c in cols) for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
        for row in table:
            click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    except MobileModelError as e:
        fail(e)
