"""The ARM runtime: an arm64 Debian userland, ARM TFLite runtimes and our qemu plugin.

Everything comes from Debian's and PyPI's packages and is built reproducibly into a
cache directory outside the git tree::

    ~/.cache/mobile-model/arm-runtime/<key>/   ($MOBILE_MODEL_CACHE replaces ~/.cache/mobile-model)
        rootfs/                 arm64 bookworm (debootstrap --foreign, .debs unpacked, no 2nd stage)
        rootfs/opt/mm/<runtime> aarch64 wheels, one target dir per runtime (see targets.RUNTIMES)
        sysroots/<qemu_cpu>/    what qemu's -L points at: symlinks into rootfs/ plus this
                                core's own proc/cpuinfo and sys/devices/system/cpu
        plugin/insn_count.so    our instruction-counting TCG plugin
        manifest.json           what went in: key inputs, every .deb and wheel

``<key>`` hashes everything the build depends on (builder version, package pins,
plugin sources, cpuinfo texts), so the directory is rebuilt only when one of them
changes. A build happens in a temporary sibling directory that is renamed into place
only after a smoke test passed: an interrupted build never counts as complete.

Command line (what ``make arm-runtime`` calls)::

    python -m pipeline.devices.runtime build [--force] [-q]
    python -m pipeline.devices.runtime info
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from pipeline.devices.targets import CORES, GUEST_CPU_KHZ, GUEST_CPUS, RUNTIMES, cpuinfo_text
from pipeline.errors import DeviceUnavailableError, Log
from pipeline.store.atomic import json_hash

# Bump when the build procedure changes in a way the other key inputs do not show.
BUILDER_VERSION = 1

SUITE = "bookworm"
GUEST_PYTHON = (3, 11)
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Wheels must run on bookworm's glibc 2.36: accept every manylinux tag up to it.
WHEEL_PLATFORMS = ("manylinux2014_aarch64",) + tuple(
    f"manylinux_2_{v}_aarch64" for v in range(17, 37)
)
PLUGIN_DIR = Path(__file__).resolve().parent / "plugin"
PLUGIN_SOURCES = ("insn_count.c", "a64_classes.h", "qemu_plugin_api.h")
PLUGIN_CFLAGS = ("-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall")
# Top-level rootfs entries visible through a sysroot. Not tmp, home, dev, proc, sys:
# host paths under those (temp dirs with models and results) must stay the host's.
SYSROOT_LINKS = ("bin", "etc", "lib", "lib64", "opt", "sbin", "usr", "var")
# Fixed guest PRNG seed: qemu otherwise fills AT_RANDOM and getrandom() from the
# host, and instruction counts then wobble by a few instructions run to run.
QEMU_SEED = 1
# Debian packages providing the host tools: (executable or file, package).
BUILD_TOOLS = (
    ("qemu-aarch64", "qemu-user"),
    ("debootstrap", "debootstrap"),
    ("dpkg-deb", "dpkg"),
    ("gcc", "gcc"),
    ("/usr/include/stdio.h", "libc6-dev"),
)
RUN_TOOLS = (("qemu-aarch64", "qemu-user"),)


def _stderr(msg: str) -> None:
    print(f"arm-runtime: {msg}", file=sys.stderr, flush=True)


def _quiet(msg: str) -> None:
    pass


@dataclass(frozen=True)
class ArmRuntime:
    """A built ARM runtime and how to run the guest in it.

    Attributes:
        root: the cache directory of this build (``.../arm-runtime/<key>``).
        key: the hash naming it.
        qemu: path of the dynamic ``qemu-aarch64`` (plugins need the dynamic one).
    """

    root: Path
    key: str
    qemu: str

    @property
    def rootfs(self) -> Path:
        return self.root / "rootfs"

    @property
    def plugin(self) -> Path:
        return self.root / "plugin" / "insn_count.so"

    def sysroot(self, qemu_cpu: str) -> Path:
        """The ``-L`` directory for one emulated core (its own proc/cpuinfo)."""
        if qemu_cpu not in CORES:
            raise DeviceUnavailableError(
                f"no sysroot for qemu cpu {qemu_cpu!r}; built for: {', '.join(CORES)}")
        return self.root / "sysroots" / qemu_cpu

    def command(self, qemu_cpu: str, argv: Sequence[str], counts_path: Optional[Path] = None,
                sysroot: Optional[Path] = None, plugin_args: Sequence[str] = ()) -> List[str]:
        """The qemu command line running the guest's python3 with ``argv``.

        Args:
            qemu_cpu: a key of ``targets.CORES``.
            argv: arguments of the guest python (script and its arguments).
            counts_path: where the instruction-count plugin writes; None runs
                without the plugin.
            sysroot: a path (e.g. a symlink) to use instead of ``self.sysroot()``.
                The guest sees this path in argv[0] and sys.path, and its length
                shifts the guest's memory layout: instruction counts repeat
                exactly only for the same path (length).
            plugin_args: more ``key=value`` arguments of the plugin (e.g.
                ``profile_from=2``, see insn_count.c); ignored without ``counts_path``.
        """
        sysroot = self.sysroot(qemu_cpu) if sysroot is None else sysroot
        cmd = [self.qemu, "-seed", str(QEMU_SEED), "-cpu", qemu_cpu, "-L", str(sysroot)]
        if counts_path is not None:
            cmd += ["-plugin", ",".join([str(self.plugin), f"out={counts_path}", *plugin_args])]
        # The host path of the guest python: qemu opens the executable without -L,
        # and python then finds its stdlib under <sysroot>/usr/lib/python3.11.
        return cmd + [str(sysroot / "usr" / "bin" / "python3"), *argv]

    def env(self, runtime: str) -> Dict[str, str]:
        """The complete guest environment (nothing is inherited from the host).

        A fixed environment keeps the guest's stack layout, and so the instruction
        counts, identical from run to run.
        """
        if runtime not in RUNTIMES:
            raise DeviceUnavailableError(
                f"unknown guest runtime {runtime!r}; built: {', '.join(RUNTIMES)}")
        return {
            "PATH": "/usr/bin:/bin",
            "LC_ALL": "C.UTF-8",
            "HOME": "/nonexistent",
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONNOUSERSITE": "1",
            "PYTHONPATH": RUNTIMES[runtime].guest_dir,
        }

    def manifest(self) -> dict:
        return json.loads((self.root / "manifest.json").read_text())


def cache_dir() -> Path:
    """``$MOBILE_MODEL_CACHE/arm-runtime`` (default ``~/.cache/mobile-model/arm-runtime``)."""
    base = os.environ.get("MOBILE_MODEL_CACHE")
    base_path = Path(base) if base else Path.home() / ".cache" / "mobile-model"
    return base_path.expanduser().resolve() / "arm-runtime"


def _plugin_sources() -> Dict[str, str]:
    return {name: (PLUGIN_DIR / name).read_text() for name in PLUGIN_SOURCES}


def key_inputs() -> dict:
    """Everything the built runtime depends on; its hash is the cache key."""
    return {
        "builder_version": BUILDER_VERSION,
        "debootstrap": {"suite": SUITE, "arch": "arm64", "variant": "minbase",
                        "include": ["python3"]},
        "guest_python": list(GUEST_PYTHON),
        "wheel_platforms": list(WHEEL_PLATFORMS),
        "runtimes": {name: list(r.requirements) for name, r in RUNTIMES.items()},
        "plugin_sources": _plugin_sources(),
        "plugin_cflags": list(PLUGIN_CFLAGS),
        "cpuinfo": {name: cpuinfo_text(core) for name, core in CORES.items()},
        "guest_cpus": GUEST_CPUS,
        "guest_cpu_khz": GUEST_CPU_KHZ,
        "sysroot_links": list(SYSROOT_LINKS),
    }


def runtime_key() -> str:
    return json_hash(key_inputs(), 16)


def _missing(tools) -> List[str]:
    missing = []
    for tool, package in tools:
        found = Path(tool).exists() if tool.startswith("/") else shutil.which(tool)
        if not found and package not in missing:
            missing.append(package)
    return missing


def ensure_host_tools(tools=BUILD_TOOLS, progress: Log = _stderr) -> None:
    """Installs missing Debian packages with apt-get when root.

    Raises:
        DeviceUnavailableError: a tool is missing and cannot be installed here; the
            message names the packages to install.
    """
    missing = _missing(tools)
    if not missing:
        return
    command = "apt-get install -y --no-install-recommends " + " ".join(missing)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise DeviceUnavailableError(
            f"emulated ARM devices need Debian packages {', '.join(missing)}; "
            f"install them with: sudo {command}")
    progress(f"installing host packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(command.split(), env=env, capture_output=True).returncode != 0:
        # A fresh machine may have no package lists yet.
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        done = subprocess.run(command.split(), env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise DeviceUnavailableError(
                f"'{command}' failed: {_tail(done.stderr or done.stdout)}")
    still = _missing(tools)
    if still:
        raise DeviceUnavailableError(f"installed, yet still missing: {', '.join(still)}")


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-lines:])


def _run(cmd: Sequence, what: str, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                              timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        raise DeviceUnavailableError(f"{what} took longer than {timeout:.0f} s") from None
    if done.returncode != 0:
        raise DeviceUnavailableError(
            f"{what} failed (exit {done.returncode}): {_tail(done.stderr or done.stdout)}")
    return done


class _Steps:
    def __init__(self, total: int, progress: Log):
        self.total, self.progress, self.n = total, progress, 0
        self.t0 = time.monotonic()

    def __call__(self, what: str) -> None:
        self.n += 1
        self.progress(f"[{self.n}/{self.total}] {what} (t={time.monotonic() - self.t0:.0f} s)")


def _debootstrap(rootfs: Path, mirror: str) -> List[str]:
    _run(["debootstrap", "--arch=arm64", "--variant=minbase", "--foreign",
          "--include=python3", SUITE, rootfs, mirror], "debootstrap", timeout=900)
    archives = rootfs / "var" / "cache" / "apt" / "archives"
    debs = sorted(archives.glob("*.deb"))
    if not debs:
        raise DeviceUnavailableError(f"debootstrap downloaded no packages into {archives}")
    return [str(d) for d in debs]


def _unpack(rootfs: Path, debs: List[str]) -> List[str]:
    for deb in debs:
        _run(["dpkg-deb", "-x", deb, rootfs], f"dpkg-deb -x {Path(deb).name}")
    names = [Path(d).name for d in debs]
    for deb in debs:  # unpacked: the archives are dead weight in the cache
        os.unlink(deb)
    return names


def _install_wheels(rootfs: Path) -> Dict[str, List[str]]:
    installed = {}
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    for name, rt in RUNTIMES.items():
        target = rootfs / rt.guest_dir.lstrip("/")
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
              "--no-compile", "--target", target, "--only-binary=:all:",
              "--python-version", "".join(map(str, GUEST_PYTHON)), "--implementation", "cp",
              *platforms, *rt.requirements], f"pip install of {name} wheels", timeout=900)
        installed[name] = sorted(p.name for p in target.glob("*.dist-info"))
    return installed


def _make_sysroots(root: Path) -> None:
    rootfs = root / "rootfs"
    for name, core in CORES.items():
        sysroot = root / "sysroots" / name
        sysroot.mkdir(parents=True)
        for entry in SYSROOT_LINKS:
            if (rootfs / entry).exists():
                os.symlink(Path("..", "..", "rootfs", entry), sysroot / entry)
        (sysroot / "proc").mkdir()
        (sysroot / "proc" / "cpuinfo").write_text(cpuinfo_text(core))
        cpu = sysroot / "sys" / "devices" / "system" / "cpu"
        cpu.mkdir(parents=True)
        span = f"0-{GUEST_CPUS - 1}\n"
        for f in ("possible", "present", "online"):
            (cpu / f).write_text(span)
        for i in range(GUEST_CPUS):
            files = {
                "topology/physical_package_id": "0", "topology/core_id": str(i),
                "topology/cluster_id": "0", "topology/core_siblings_list": span.strip(),
                "topology/package_cpus_list": span.strip(),
                "topology/cluster_cpus_list": span.strip(),
                "topology/thread_siblings_list": str(i), "topology/core_cpus_list": str(i),
                "cpufreq/cpuinfo_max_freq": str(GUEST_CPU_KHZ),
                "cpufreq/cpuinfo_min_freq": str(GUEST_CPU_KHZ),
            }
            for rel, text in files.items():
                path = cpu / f"cpu{i}" / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text + "\n")


def _precompile(runtime: ArmRuntime, progress: Log) -> None:
    """Writes .pyc files for the guest stdlib and wheels (start-up under emulation)."""
    dirs = [runtime.rootfs / "usr" / "lib" / f"python{GUEST_PYTHON[0]}.{GUEST_PYTHON[1]}",
            runtime.rootfs / "usr" / "lib" / "python3" / "dist-packages"]
    dirs += [runtime.rootfs / rt.guest_dir.lstrip("/") for rt in RUNTIMES.values()]
    dirs = [str(d) for d in dirs if d.is_dir()]
    args = ["-m", "compileall", "-q", "-j", "0", "-x", r"/(tests?|idlelib|lib2to3)/", *dirs]
    if sys.version_info[:2] == GUEST_PYTHON:
        cmd = [sys.executable, *args]  # same bytecode format, no emulation needed
    else:
        cmd = runtime.command("cortex-a76", args)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                          env=runtime.env("litert") if cmd[0] == runtime.qemu else None)
    if done.returncode != 0:
        # compileall fails on the odd file that is not Python 3 source; it is never
        # imported, so only report it.
        progress(f"  precompile: some files not compiled: {_tail(done.stdout, 2)}")


def _compile_plugin(root: Path) -> None:
    out = root / "plugin"
    out.mkdir()
    for name in PLUGIN_SOURCES:
        shutil.copy2(PLUGIN_DIR / name, out / name)
    _run(["gcc", *PLUGIN_CFLAGS, "-o", out / "insn_count.so", out / "insn_count.c"],
         "compiling the qemu plugin")


SMOKE = """
import os, sys
import numpy, {module}
try:
    os.lseek(-1, 0x6D6D5F7200000001, 0)
except OSError:
    pass
try:
    os.lseek(-1, 0x6D6D5F7200000002, 0)
except OSError:
    pass
print(numpy.__version__)
"""


def _smoke_test(runtime: ArmRuntime) -> Dict[str, str]:
    """Imports each runtime in the guest under the plugin; returns numpy versions."""
    from pipeline.devices.insn_counts import parse_insn_counts

    versions = {}
    with tempfile.TemporaryDirectory(prefix="mm-arm-smoke-") as tmp:
        for name, rt in RUNTIMES.items():
            counts = Path(tmp) / f"{name}.txt"
            cmd = runtime.command("cortex-a53", ["-c", SMOKE.format(module=rt.module)], counts)
            done = _run(cmd, f"smoke test of {name} in the guest", timeout=300,
                        env=runtime.env(name))
            parse_insn_counts(counts.read_text(), expect_regions=1)
            versions[name] = done.stdout.strip()
    return versions


def _qemu_version() -> str:
    done = subprocess.run(["qemu-aarch64", "--version"], capture_output=True, text=True)
    return done.stdout.splitlines()[0] if done.stdout else "unknown"


def _build(final: Path, key: str, progress: Log, mirror: str) -> None:
    base = final.parent
    tmp = base / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    runtime = ArmRuntime(root=tmp, key=key, qemu=shutil.which("qemu-aarch64"))
    step = _Steps(7, progress)
    try:
        step(f"debootstrap --foreign arm64 {SUITE} with python3 from {mirror}")
        debs = _debootstrap(tmp / "rootfs", mirror)
        step(f"unpacking {len(debs)} .debs with dpkg-deb -x")
        deb_names = _unpack(tmp / "rootfs", debs)
        step("installing aarch64 wheels: " + "; ".join(
            " ".join(r.requirements) for r in RUNTIMES.values()))
        wheels = _install_wheels(tmp / "rootfs")
        step(f"per-core sysroots for {', '.join(CORES)}")
        _make_sysroots(tmp)
        step("precompiling the guest's Python files")
        _precompile(runtime, progress)
        step("compiling the instruction-count plugin")
        _compile_plugin(tmp)
        step("smoke test: importing each runtime in the guest under the plugin")
        numpy_versions = _smoke_test(runtime)
        manifest = {
            "key": key,
            "key_inputs": key_inputs(),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - step.t0, 1),
            "qemu": _qemu_version(),
            "mirror": mirror,
            "debs": deb_names,
            "wheels": wheels,
            "guest_numpy": numpy_versions,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"built {final} in {time.monotonic() - step.t0:.0f} s")


def ensure_runtime(progress: Optional[Log] = _stderr, force: bool = False) -> ArmRuntime:
    """Returns the ARM runtime, building it first if this key is not cached yet.

    Idempotent and cheap when the runtime exists (a hash of a few small inputs and
    a directory check). Safe to call from several processes: builds are serialised
    with a lock file and the loser of a race reuses the winner's build.

    Args:
        progress: called with one line per build step; None for silence.
        force: rebuild even if a complete build exists.

    Raises:
        DeviceUnavailableError: a host tool is missing and cannot be installed (not
            root / no apt-get), or a build step failed; the message says which.
    """
    progress = progress or _quiet
    key = runtime_key()
    base = cache_dir()
    final = base / key
    if final.is_dir() and not force:
        ensure_host_tools(RUN_TOOLS, progress)
        return ArmRuntime(root=final, key=key, qemu=shutil.which("qemu-aarch64"))
    if os.geteuid() != 0:
        ensure_host_tools(BUILD_TOOLS, progress)  # names the missing packages first
        raise DeviceUnavailableError(
            f"building the ARM runtime needs root (debootstrap); run "
            f"'sudo {sys.executable} -m pipeline.devices.runtime build' once, or point "
            f"MOBILE_MODEL_CACHE at a directory holding a built arm-runtime/{key}")
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure_host_tools(BUILD_TOOLS, progress)  # under the lock: one apt-get at a time
        # Holding the lock, no other build is running: leftovers of killed builds go.
        for stale in base.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.is_dir() and force:
            shutil.rmtree(final)
        if not final.is_dir():
            progress(f"building {final} (a few minutes, once per key)")
            mirror = os.environ.get("MOBILE_MODEL_DEBIAN_MIRROR", DEFAULT_MIRROR)
            _build(final, key, progress, mirror)
    return ArmRuntime(root=final, key=key, qemu=shutil.which("qemu-aarch64"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.devices.runtime",
                                     description="Build or inspect the ARM runtime.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    build = sub.add_parser("build", help="build the runtime unless already cached")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.add_argument("-q", "--quiet", action="store_true")
    sub.add_parser("info", help="print the cache key, its path and whether it is built")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            rt = ensure_runtime(progress=None if args.quiet else _stderr, force=args.force)
            print(rt.root)
        else:
            final = cache_dir() / runtime_key()
            print(json.dumps({"key": runtime_key(), "path": str(final),
                              "built": final.is_dir()}, indent=2))
    except DeviceUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
