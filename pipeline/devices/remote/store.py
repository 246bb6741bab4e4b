"""The local store of measured points: one CSV row per successful real measurement.

``<cache>/remote/measured.csv`` (:func:`~.target.cache_dir`). A row holds the settings
(threads, cores, runs, warm-up, runtime and version), the model (sha256, number format),
the device's facts and the timings in milliseconds. Appending takes a lock and rewrites
the file atomically (temporary file + rename), so a killed writer never leaves half a row.
A copy of each measured model is kept by its sha256 (``models/<sha256>.tflite``), so the
points can be emulated again later (``calibrate --measured``) wherever the file went.
"""

import csv
import fcntl
import io
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from pipeline.devices.remote.measurement import Measurement
from pipeline.devices.remote.target import cache_dir
from pipeline.errors import DataError
from pipeline.store.atomic import atomic_path, atomic_write_text

COLUMNS = ("measured_at", "target", "device_model", "device_cpu", "machine", "kernel", "governor",
           "runtime", "runtime_version", "threads", "cores", "runs", "warmup", "model", "model_sha256",
           "number_format", "init_ms", "first_inference_ms", "warmup_mean_ms", "mean_ms", "std_ms",
           "min_ms", "max_ms", "peak_rss_mib", "outputs_agree", "profile")


def store_path() -> Path:
    return cache_dir() / "measured.csv"


def model_copy(sha256: str, path: Optional[Path] = None) -> Path:
    """Where the store keeps the model of ``sha256`` (beside the store at ``path``)."""
    return (path or store_path()).parent / "models" / f"{sha256}.tflite"


def _ms(seconds: Optional[float]) -> str:
    return "" if seconds is None else f"{1000 * seconds:.4f}"


def row_of(m: Measurement) -> Dict[str, str]:
    """The store's row for a loaded measurement (its timing and settings)."""
    t, d, s = m.timing, m.device, m.settings
    if not m.loaded or t is None:
        raise ValueError("only a measurement that ran has a row")
    agree = m.outputs_agree()
    cores = s.get("cores")
    return {"measured_at": m.measured_at, "target": m.target,
            "device_model": (d and d.model) or "", "device_cpu": (d and d.cpu) or "",
            "machine": (d and d.machine) or "", "kernel": (d and d.kernel) or "",
            "governor": (d and d.governor) or "", "runtime": m.runtime, "runtime_version": m.runtime_version,
            "threads": str(s["threads"]), "cores": "" if cores is None else ",".join(map(str, cores)),
            "runs": str(t.runs), "warmup": str(t.warmup_runs), "model": Path(m.model).name,
            "model_sha256": m.model_sha256, "number_format": m.number_format,
            "init_ms": _ms(t.init_s), "first_inference_ms": _ms(t.first_inference_s),
            "warmup_mean_ms": _ms(t.warmup_mean_s), "mean_ms": _ms(t.mean_s), "std_ms": _ms(t.std_s),
            "min_ms": _ms(t.min_s), "max_ms": _ms(t.max_s),
            "peak_rss_mib": "" if t.peak_rss_kib is None else f"{t.peak_rss_kib / 1024:.2f}",
            "outputs_agree": "" if agree is None else str(agree).lower(), "profile": m.profile or ""}


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def append(m: Measurement, path: Optional[Path] = None) -> Path:
    """Appends ``m``'s row to the store; returns the store's path.

    Raises:
        DataError: the existing store is not one this version reads.
    """
    path = path or store_path()
    with _locked(path):
        rows = read_rows(path)
        rows.append(row_of(m))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, out.getvalue())
        keep = model_copy(m.model_sha256, path)
        if not keep.exists():
            with atomic_path(keep) as tmp:
                shutil.copyfile(m.model, tmp)
    return path


def read_rows(path: Optional[Path] = None) -> List[Dict[str, str]]:
    """Every stored row, oldest first ([] when there is no store yet).

    Raises:
        DataError: unreadable, or its header is not :data:`COLUMNS`.
    """
    path = path or store_path()
    if not path.exists():
        return []
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != COLUMNS:
                raise DataError(f"{path}: columns {reader.fieldnames} are not those of the store of "
                                f"measured points ({', '.join(COLUMNS)}); move it aside")
            rows = list(reader)
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the store of measured points ({e})") from None
    if any(None in r or None in r.values() for r in rows):
        raise DataError(f"{path}: a row has another number of fields than the header")
    return rows
