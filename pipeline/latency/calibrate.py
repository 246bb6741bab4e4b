"""Calibrating the latency model and writing what it found.

:func:`calibrate` (from :mod:`pipeline.latency.calibration`) measures and fits;
:func:`write_calibration` writes the fitted parameters (``params.yaml``, see
:mod:`pipeline.latency.params`) and the report (``report.md``, ``calibration.json``)
to a directory the user chooses, by default the user cache
(``$MOBILE_MODEL_CACHE/latency``, default ``~/.cache/mobile-model/latency``), where
estimates find the parameters without further ado. The installed package is never
written to.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipeline.latency.calibration_report import write_report
from pipeline.latency.calibration import Calibration, calibrate
from pipeline.latency.params import PARAMS_NAME, write_params
from pipeline.latency.reference import cache_root, noop
from pipeline.errors import Log


__all__ = ["CalibrationFiles", "calibrate", "default_out_dir", "write_calibration"]


@dataclass(frozen=True)
class CalibrationFiles:
    """What :func:`write_calibration` wrote (``params`` None when not asked to)."""

    report: Path
    json: Path
    params: Optional[Path]


def default_out_dir() -> Path:
    """Where a calibration goes unless told otherwise: the user's latency cache."""
    return cache_root()


def write_calibration(cal: Calibration, out_dir: Optional[Path] = None, params: bool = True,
                      log: Log = noop) -> CalibrationFiles:
    """Writes the report and (with ``params``) the fitted parameters under ``out_dir``.

    Args:
        cal: what :func:`calibrate` found.
        out_dir: the directory (default :func:`default_out_dir`).
        params: also write ``params.yaml``.

    Raises:
        ConfigError: the fitted parameters would not load back.
    """
    out = Path(out_dir) if out_dir is not None else default_out_dir()
    md, js = write_report(cal, out)
    path = None
    if params:
        measured = cal.params.info.get("measured_points", 0)
        path = write_params(out / PARAMS_NAME, cal.params, f"{len(cal.points) - measured} published points"
                            f"{f' and {measured} measured on real devices' if measured else ''} "
                            f"({cal.params.info['single_thread_points']} single-thread).")
        log(f"[calibrate] wrote the latency parameters to {path}")
    return CalibrationFiles(md, js, path)
