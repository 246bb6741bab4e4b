"""The result of one measurement on a real board or phone, and the host reference it is
compared with.

A :class:`Measurement` holds what was measured (timings, peak memory), on what (device
facts, runtime and version), how (the exact :class:`~.target.Settings`), and whether
the outputs agree with the host's on the same inputs. JSON via :meth:`Measurement.to_dict`.
"""

import datetime
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from pipeline.devices.guest_result import DeviceFacts, Timing
from pipeline.devices.model_io import OutputAgreement
from pipeline.devices.targets import RUNTIMES, GuestRuntime
from pipeline.errors import DeviceOutputError, RuntimeIncompatibleError

#: Schema of :meth:`Measurement.to_dict` (and of the store's rows).
SCHEMA = 1


@dataclass(frozen=True)
class Measurement:
    """One model measured on one real device.

    Attributes:
        target: ``ssh://user@host:port`` or ``adb://serial``.
        model, model_sha256, number_format: the file; what it computes in
            (:func:`pipeline.tflite.host.numeric_format`: float32, hybrid or int8).
        runtime, runtime_version: what ran it on the device (``benchmark_model`` for adb).
        settings: threads, cores, runs, warm-up, runtime, remote python: enough to repeat it.
        loaded, verdict, load_error: "loads", or ``not loadable on <runtime> <version>: ...``.
        timing, device: the measured timings and what the device says about itself.
        outputs, host_reference, samples: every output against the host runtime of the
            same name and version (empty where the tool feeds its own inputs: adb).
        top1: percent of samples whose arg-max is their label (labelled data, one output).
        remote_dir: the one directory the run used on the device.
        profile: the emulated profile named beside the target, if any.
        measured_at: UTC, ISO 8601.
    """

    target: str
    model: str
    model_sha256: str
    number_format: str
    runtime: str
    runtime_version: str
    settings: Dict[str, Any]
    loaded: bool
    verdict: str
    load_error: Optional[str] = None
    timing: Optional[Timing] = None
    device: Optional[DeviceFacts] = None
    outputs: Tuple[OutputAgreement, ...] = ()
    host_reference: Optional[str] = None
    samples: int = 0
    top1: Optional[float] = None
    remote_dir: str = ""
    profile: Optional[str] = None
    measured_at: str = ""

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["schema"] = SCHEMA
        d["outputs_agree"] = self.outputs_agree()
        return d

    def outputs_agree(self) -> Optional[bool]:
        """Every output bit-exact for every sample (None: nothing compared)."""
        if not self.outputs:
            return None
        return all(o.exact_count == o.samples for o in self.outputs)


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def board_runtime(name: str, version: str) -> GuestRuntime:
    """The runtime a board reported, as the table of device runtimes describes one (same
    pins as the emulated device's where the version is another)."""
    known = RUNTIMES[name]
    if known.version == version:
        return known
    numpy_pins = tuple(r for r in known.requirements if r.startswith("numpy"))
    return GuestRuntime(known.name, known.distribution, version, known.module,
                        (f"{known.distribution}=={version}", *numpy_pins))


def host_reference(runtime: GuestRuntime) -> str:
    """"xnnpack" (the pipeline's own interpreter: same runtime and version) or the
    x86_64 build of the board's runtime (:mod:`pipeline.devices.host_twin`)."""
    from pipeline.devices.host_twin import needs_twin, twin_reference

    return twin_reference(runtime) if needs_twin(runtime) else "xnnpack"


def reference_outputs(model_path: Path, xs: Sequence[np.ndarray], runtime: GuestRuntime
                      ) -> Tuple[np.ndarray, ...]:
    """The host's outputs on ``xs`` with the board's runtime and version, one array per output.

    Raises:
        DeviceOutputError: the host reference does not load the model.
        DeviceUnavailableError: its environment could not be built.
    """
    from pipeline.devices.host_twin import needs_twin, twin_run

    if needs_twin(runtime):
        error, ys = twin_run(model_path, list(xs), runtime)
    else:
        from pipeline.tflite.sandbox import host_outputs_untrusted

        try:
            error, ys = None, tuple(host_outputs_untrusted(model_path, list(xs)))
        except RuntimeIncompatibleError as e:
            error, ys = str(e), ()
    if error is not None:
        raise DeviceOutputError(f"the host reference {host_reference(runtime)} does not load "
                                f"{model_path.name}: {error}")
    return tuple(ys)
