"""A timed run on an Android device over adb, with TFLite's ``benchmark_model``.

The user names the tool once (``--benchmark-model PATH``, remembered in
``<cache>/remote/benchmark_model.json``); it is pushed to :data:`~.target.ADB_DIR` once
per version (its sha256 is kept beside it). Each run pushes the model there, runs the
tool with exact counts (no minimum times), reads its output
(:mod:`.benchmark_output`), and removes the model. benchmark_model feeds its own random
inputs, so outputs are not compared with the host's.
"""

import json
import os
import shlex
import shutil
import subprocess
from dataclasses import asdict, replace
from pathlib import Path
from typing import List, Optional

from pipeline.devices.guest_result import DeviceFacts
from pipeline.devices.model_io import not_loadable
from pipeline.devices.remote.benchmark_output import parse_benchmark_output, refusal
from pipeline.devices.remote.measurement import Measurement, now_utc
from pipeline.devices.remote.target import ADB_DIR, AdbTarget, Settings, cache_dir
from pipeline.errors import ConfigError, DeviceOutputError, DeviceUnavailableError, Log
from pipeline.store.atomic import atomic_write_json, sha256_file
from pipeline.tflite.host import numeric_format

#: Seconds allowed for one adb call (a benchmark included).
ADB_TIMEOUT_S = 900.0
RUNTIME = "benchmark_model"
_FACTS = ("model", "cpu", "machine", "kernel", "governor", "cpus")


def remembered_tool() -> Path:
    return cache_dir() / "benchmark_model.json"


def benchmark_tool(given: Optional[Path]) -> Path:
    """The benchmark_model binary: ``given`` (then remembered), else the remembered one.

    Raises:
        ConfigError: none given and none remembered, or the file does not exist.
    """
    if given is not None:
        given = Path(given).resolve()
        if not given.is_file():
            raise ConfigError(f"benchmark_model {given} does not exist")
        atomic_write_json(remembered_tool(), {"path": str(given)})
        return given
    try:
        path = Path(json.loads(remembered_tool().read_text())["path"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError("an adb target needs TFLite's benchmark_model built for the phone: give it once "
                          "with --benchmark-model PATH (it is remembered)") from None
    if not path.is_file():
        raise ConfigError(f"the remembered benchmark_model {path} no longer exists: give it again with "
                          f"--benchmark-model PATH")
    return path


def parse_facts(text: str) -> DeviceFacts:
    """The ``key=value`` lines of :data:`_FACTS` that :func:`measure_over_adb` asks the phone for.

    Raises:
        DeviceOutputError: a key is missing, or machine or kernel is empty.
    """
    values = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key in _FACTS:
            values[key] = value.strip() or None
    missing = [k for k in _FACTS if k not in values]
    if missing or not values["machine"] or not values["kernel"]:
        raise DeviceOutputError(f"adb device facts: missing {', '.join(missing) or 'machine or kernel'}")
    cpus = values["cpus"]
    return DeviceFacts(model=values["model"], cpu=values["cpu"], machine=values["machine"],
                       kernel=values["kernel"], governor=values["governor"],
                       cpus=int(cpus) if cpus and cpus.isdigit() else None)


class Adb:
    """``adb -s SERIAL`` calls; a failure of adb itself is one clear error."""

    def __init__(self, target: AdbTarget):
        self.target = target
        self.adb = shutil.which("adb")
        if self.adb is None:
            raise DeviceUnavailableError("adb is not installed on this machine (Android's platform-tools)")

    def call(self, args: List[str], during: str, check: bool = True) -> subprocess.CompletedProcess:
        try:
            done = subprocess.run([self.adb, "-s", self.target.serial, *args], capture_output=True, text=True,
                                  errors="replace", timeout=ADB_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DeviceUnavailableError(f"{during} on {self.target.url()} took more than "
                                         f"{ADB_TIMEOUT_S:.0f} s") from None
        if check and done.returncode:
            tail = (done.stderr.strip() or done.stdout.strip() or "no message").splitlines()[-1]
            raise DeviceUnavailableError(f"{self.target.url()}: {during} failed (adb exit {done.returncode}: "
                                         f"{tail})")
        return done

    def shell(self, command: str, during: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.call(["shell", command], during, check)


def _push_tool(adb: Adb, tool: Path, say: Log) -> str:
    """Pushes benchmark_model unless the phone has this very binary; returns its sha256."""
    sha = sha256_file(tool)
    remote = f"{ADB_DIR}/benchmark_model"
    have = adb.shell(f"cat {remote}.sha256 2>/dev/null", "reading the cached tool's sha256", check=False)
    if have.stdout.strip() != sha:
        say(f"{adb.target.url()}: pushing {tool.name} to {ADB_DIR} (once per version)...")
        adb.shell(f"mkdir -p {ADB_DIR}", "creating the tool's directory")
        adb.call(["push", str(tool), remote], "pushing benchmark_model")
        adb.shell(f"chmod 755 {remote} && echo {sha} > {remote}.sha256", "installing benchmark_model")
    return sha


def measure_over_adb(model_path: Path, target: AdbTarget, settings: Settings,
                     benchmark_model: Optional[Path] = None, profile: Optional[str] = None,
                     progress: Optional[Log] = None) -> Measurement:
    """Measures ``model_path`` with benchmark_model on the phone ``target``.

    Returns:
        A :class:`Measurement` (runtime ``benchmark_model``, version: the first 12 hex
        digits of the binary's sha256; no output comparison). A model the tool cannot
        load is a result with ``loaded`` False.

    Raises:
        ConfigError: no benchmark_model known.
        DeviceUnavailableError: no adb, no such device, or an adb call failed.
        DeviceOutputError: output benchmark_model prints on success that cannot be read.
    """
    from pipeline.tflite.reader import read_tflite

    settings = settings.validate()
    if settings.warmup < 1:
        raise ConfigError("benchmark_model always runs at least one warm-up inference: give a warm-up of 1 or more")
    model_path = Path(model_path).resolve()
    model = read_tflite(model_path)
    tool = benchmark_tool(benchmark_model)
    adb = Adb(target)
    say = progress or (lambda m: None)
    state = adb.call(["get-state"], "connecting", check=False)
    if state.returncode or state.stdout.strip() != "device":
        tail = (state.stderr.strip() or state.stdout.strip() or "no answer").splitlines()[-1]
        raise DeviceUnavailableError(f"{target.url()} is not ready: {tail} (adb devices lists what is attached)")
    version = _push_tool(adb, tool, say)[:12]
    facts = parse_facts(adb.shell(
        "echo model=$(getprop ro.product.model); echo cpu=$(getprop ro.soc.model); echo machine=$(uname -m); "
        "echo kernel=$(uname -r); echo governor=$(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor "
        "2>/dev/null); echo cpus=$(nproc 2>/dev/null)", "reading the device's facts").stdout)
    settings = replace(settings, remote_python=None, runtime=f"{RUNTIME} {version}")
    remote_model = f"{ADB_DIR}/run-{os.getpid()}-{model_path.stem[:40]}.tflite"
    base = dict(target=target.url(), model=str(model_path), model_sha256=sha256_file(model_path),
                number_format=numeric_format(model), runtime=RUNTIME, runtime_version=version,
                settings=asdict(settings), remote_dir=ADB_DIR, profile=profile, measured_at=now_utc(),
                device=facts)
    pin = "" if settings.cores is None else f"taskset {sum(1 << c for c in settings.cores):x} "
    command = (f"{pin}{ADB_DIR}/benchmark_model --graph={shlex.quote(remote_model)} "
               f"--num_threads={settings.threads} --num_runs={settings.runs} --warmup_runs={settings.warmup} "
               f"--min_secs=0 --warmup_min_secs=0")
    adb.call(["push", str(model_path), remote_model], "pushing the model")
    try:
        say(f"{target.url()}: benchmark_model, {settings.warmup} warm-up and {settings.runs} timed runs...")
        done = adb.shell(command, "the benchmark", check=False)
    finally:
        adb.shell(f"rm -f {shlex.quote(remote_model)}", "removing the model", check=False)
    text = done.stdout + "\n" + done.stderr
    # Before Android 7, adb shell always exits 0: a refusal is known by its words.
    refused = refusal(text) if done.returncode or "Inference timings in us" not in text else None
    if refused is not None:
        from pipeline.devices.check import what_it_lacks

        return Measurement(loaded=False, verdict=not_loadable(RUNTIME, version, what_it_lacks(refused)),
                           load_error=refused.message, **base)
    if done.returncode:
        tail = (text.strip() or "no output").splitlines()[-1]
        raise DeviceUnavailableError(f"{target.url()}: benchmark_model exited {done.returncode}: {tail}")
    parsed = parse_benchmark_output(text)
    if parsed.threads is not None and parsed.threads != settings.threads:
        raise DeviceOutputError(f"{target.url()}: benchmark_model ran {parsed.threads} threads, "
                                f"{settings.threads} were asked for")
    return Measurement(loaded=True, verdict="loads", timing=parsed.timing, **base)
