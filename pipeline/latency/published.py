"""Published real-device latencies: the data the cost model is fitted on.

The tables are package data (``pipeline/latency/data/``), not code:

- ``published_latency.csv``: single-thread latencies of the full-size families
  (width 1.0, 224x224x3, 1000 classes, batch 1), one row per model, numeric
  format and device, with the runtime that measured it and the source.
- ``multi_thread.csv``: the multi-thread latencies of the same XNNPACK table (as
  many threads as big cores); they fit the thread scaling only.
"""

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from pipeline.devices.profiles import DEVICES
from pipeline.errors import ConfigError
from pipeline.variants import VARIANTS, published_name

DATA_DIR = Path(__file__).resolve().parent / "data"
PUBLISHED_CSV = DATA_DIR / "published_latency.csv"
MULTI_THREAD_CSV = DATA_DIR / "multi_thread.csv"

PUBLISHED_HEADER = ("model", "variant", "device", "threads", "latency_ms", "runtime", "source")
MULTI_THREAD_HEADER = ("model", "device", "latency_ms")

# Which guest runtime runs the kernels a published runtime ran. XNNPACK's float
# kernels of 2020 -> ai-edge-litert (XNNPACK). TFLite of 2019 ran int8 on its builtin
# kernels, never XNNPACK -> tflite-runtime 2.14, whose int8 path is also the builtin
# kernels (it never applies XNNPACK to int8). Neither is the same code as in the
# source; the residuals of the fit include that difference.
PUBLISHED_RUNTIMES = {"xnnpack-2020": "litert", "tflite-2019": "tflite-runtime"}
# Published variant (as the tables spell it) -> its number format. A QAT model and a
# PTQ model of the same architecture convert to the same ops and types, so they run
# the same kernels: PTQ with random calibration stands in for QAT.
PUBLISHED_VARIANTS = {published_name(v): VARIANTS.get(v).number_format for v in ("float32", "int8-qat", "int8-ptq")}
#: The number formats of published points, the formats an estimate can be validated for.
PUBLISHED_FORMATS = tuple(dict.fromkeys(PUBLISHED_VARIANTS.values()))
# The published order of the four models, slowest first (every column of the table).
PUBLISHED_ORDER = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")


@dataclass(frozen=True)
class PublishedPoint:
    """One published single-thread latency of a full-size model."""

    model: str
    variant: str
    device: str
    threads: int
    latency_ms: float
    runtime: str
    source: str

    @property
    def name(self) -> str:
        return f"{self.model} {self.variant} {self.device}"


def _read(path: Path, what: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot read: {e}") from None


def _csv_rows(text: str, header: Sequence[str], source: str) -> List[Dict[str, str]]:
    """The rows of a CSV whose header may be written as a comment; other comments skipped."""
    lines = []
    for ln in text.splitlines():
        # The project's reference file writes its header as a comment ("# model,...").
        if ln.lstrip("# ").startswith("model,"):
            ln = ln.lstrip("# ")
        elif not ln.strip() or ln.lstrip().startswith("#"):
            continue
        lines.append(ln)
    required = ",".join(h for h in header if h != "source")
    if not lines or not lines[0].startswith(required):
        raise ConfigError(f"{source}: expected the header {','.join(header)}, "
                          f"got {lines[0] if lines else 'nothing'!r}")
    return list(csv.DictReader(io.StringIO("\n".join(lines))))


def _family(row: Dict[str, str], where: str) -> str:
    from pipeline.train.zoo import family_names

    if row["model"] not in family_names():
        raise ConfigError(f"{where}: unknown model family {row['model']!r}; valid: {', '.join(family_names())}")
    return row["model"]


def _device(row: Dict[str, str], where: str) -> str:
    if row["device"] not in DEVICES.names():
        raise ConfigError(f"{where}: unknown device {row['device']!r}; valid: {', '.join(DEVICES.names())}")
    return row["device"]


def _published_point(row: Dict[str, str], where: str) -> PublishedPoint:
    missing = [k for k in PUBLISHED_HEADER[:-1] if not row.get(k)]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    _family(row, where)
    _device(row, where)
    if row["variant"] not in PUBLISHED_VARIANTS:
        raise ConfigError(f"{where}: variant {row['variant']!r}; valid: {', '.join(PUBLISHED_VARIANTS)}")
    if row["runtime"] not in PUBLISHED_RUNTIMES:
        raise ConfigError(f"{where}: runtime {row['runtime']!r}; valid: {', '.join(PUBLISHED_RUNTIMES)}")
    try:
        threads, ms = int(row["threads"]), float(row["latency_ms"])
    except ValueError:
        raise ConfigError(f"{where}: threads and latency_ms must be numbers, got "
                          f"{row['threads']!r}, {row['latency_ms']!r}") from None
    if threads != 1:
        raise ConfigError(f"{where}: threads {threads}: the cost model is fitted on "
                          f"single-thread latencies only")
    if not ms > 0:
        raise ConfigError(f"{where}: latency_ms must be > 0, got {ms:g}")
    return PublishedPoint(row["model"], row["variant"], row["device"], threads, ms,
                          row["runtime"], row.get("source") or "")


def load_published(path: Optional[Path] = None) -> List[PublishedPoint]:
    """The published single-thread latencies: the packaged table or a CSV of its format.

    Raises:
        ConfigError: unreadable file, a missing column, or a value this calibration
            cannot use (the message names the row, the value and what is valid).
    """
    if path is None:
        text, source = _read(PUBLISHED_CSV, "published latencies"), "published latencies"
    else:
        text, source = _read(path, "published latencies"), str(path)
    out = [_published_point(row, f"{source}, row {i}")
           for i, row in enumerate(_csv_rows(text, PUBLISHED_HEADER, source), start=1)]
    if not out:
        raise ConfigError(f"{source}: no published points")
    return out


def load_multi_thread(path: Path = MULTI_THREAD_CSV) -> Dict[Tuple[str, str], float]:
    """Published multi-thread latencies (ms) by (model, device), in the table's order.

    Raises:
        ConfigError: unreadable file, an unknown model or device, or a latency that
            is not a positive number.
    """
    source = f"multi-thread latencies {Path(path).name}"
    out: Dict[Tuple[str, str], float] = {}
    for i, row in enumerate(_csv_rows(_read(path, "multi-thread latencies"), MULTI_THREAD_HEADER,
                                      source), start=1):
        where = f"{source}, row {i}"
        _device(row, where)
        try:
            ms = float(row["latency_ms"])
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: latency_ms must be a number, got {row['latency_ms']!r}") from None
        if not ms > 0:
            raise ConfigError(f"{where}: latency_ms must be > 0, got {ms:g}")
        out[(_family(row, where), row["device"])] = ms
    return out
