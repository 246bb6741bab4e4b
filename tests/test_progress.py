"""Progress output: a bar on a terminal, plain lines in a pipe, nothing with -q/--json.

The bar follows the log lines of training epochs, the device matrix and search
trials; the last test pins those line formats against the modules that write them,
so a change there fails here instead of silently losing the bar.
"""

import io
import json
import re
from pathlib import Path

from click.testing import CliRunner

from pipeline.cli import main
from pipeline.cli.common import logger
from pipeline.cli.progress import DEVICE_DONE, DEVICES_START, EPOCH, SEARCH_START, SEARCH_TRIAL, progress_log

REPO = Path(__file__).resolve().parents[1]


class Terminal(io.StringIO):
    def isatty(self):
        return True


EPOCHS = ["[train] epoch 1/3  loss 2.0  (9.0 s)", "[train] epoch 2/3  loss 1.0  (8.0 s)",
          "[train] epoch 3/3  loss 0.5  (8.0 s)", "[prune] starting"]


def test_a_pipe_gets_the_plain_lines_and_no_control_characters():
    out = io.StringIO()
    log = progress_log(out)
    for line in EPOCHS:
        log(line)
    assert out.getvalue() == "\n".join(EPOCHS) + "\n"


def test_a_terminal_gets_every_line_and_an_epoch_bar_under_them():
    out = Terminal()
    log = progress_log(out)
    log(EPOCHS[0])
    assert out.getvalue().endswith("[train] epoch 1/3  loss 2.0  (9.0 s)\ntrain epochs [########" + "-" * 16
                                   + "] 1/3  0 s")
    log(EPOCHS[1])
    assert "\r\x1b[K[train] epoch 2/3" in out.getvalue()  # the bar is erased before the next line
    assert out.getvalue().endswith("] 2/3  0 s")
    log(EPOCHS[2])
    log(EPOCHS[3])
    text = out.getvalue()
    assert "train epochs [" + "#" * 24 + "] 3/3  0 s\n[prune] starting\n" in text  # a finished bar stays
    for line in EPOCHS:
        assert line + "\n" in text


def test_device_matrix_and_search_trials_get_bars():
    out = Terminal()
    log = progress_log(out)
    log("[devices] 2 run(s) on emulated ARM (2 worker(s)), 50 images each")
    log("[device/pixel4/int8-qat] top-1 90.0%")
    assert out.getvalue().endswith("device runs [" + "#" * 12 + "-" * 12 + "] 1/2  0 s")
    log("[device/rpi4/int8-qat] top-1 90.0%")
    assert "device runs [" + "#" * 24 + "] 2/2  0 s\n" in out.getvalue()

    out = Terminal()
    log = progress_log(out)
    log("[search] default-smoke on pixel4: 12 candidates, 4 trial(s), int8-qat within 5 ms")
    log("[search] trial 0: mobilenet_v2-0.35-32: 1.000 ms, 0.50 MiB, 100.0 KiB -> fits, proxy training")
    log("[search] trial 0: mobilenet_v2-0.35-32: proxy val top-1 50.0%")
    log("[search] trial 1: mobilenet_v1-0.25-32: 9.000 ms, 0.50 MiB, 100.0 KiB -> over budget")
    assert out.getvalue().endswith("search trials [" + "#" * 12 + "-" * 12 + "] 2/4  0 s")


def test_quiet_prints_nothing_and_loud_prints_the_line(capsys):
    logger(True)("[train] epoch 1/3")
    assert capsys.readouterr() == ("", "")
    logger(False)("[train] epoch 1/3")
    assert capsys.readouterr() == ("", "[train] epoch 1/3\n")


def test_json_commands_print_no_progress(tmp_path):
    res = CliRunner(mix_stderr=False).invoke(main, ["datasets", "--json"])
    assert res.stderr == "" and json.loads(res.stdout)


def test_the_line_formats_the_bar_follows_are_those_the_pipeline_writes():
    fit = (REPO / "pipeline" / "train" / "fit.py").read_text()
    matrix = (REPO / "pipeline" / "build" / "matrix.py").read_text()
    study = (REPO / "pipeline" / "search" / "study.py").read_text()
    assert 'f"[{label}] epoch {epoch + 1}/{cap}' in fit
    assert 'f"[devices] {len(pending)} run(s) on emulated ARM' in matrix
    assert 'f"[device/{dev}/{v}] "' in matrix
    assert re.search(r'f"\[search\] \{recipe.build_name\} on \{device\}: .*\n\s*f"\{recipe.search.trials\} trial\(s\)',
                     study)
    assert 'f"[search] trial {trial.number}: ' in study
    # ... and lines of those formats are recognised.
    assert EPOCH.match("[qat] epoch 2/5  loss 0.1").group("total") == "5"
    assert DEVICES_START.match("[devices] 10 run(s) on emulated ARM (1 worker(s)), 8 images each")
    assert DEVICE_DONE.match("[device/camera-a53/dynamic] NOT LOADABLE")
    assert SEARCH_START.match("[search] x on pixel4: 9 candidates, 3 trial(s), int8-qat within 1 ms")["total"] == "3"
    assert SEARCH_TRIAL.match("[search] trial 12: a: b")["number"] == "12"
