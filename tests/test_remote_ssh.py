"""``device run --target ssh://...`` against a real OpenSSH server on 127.0.0.1.

The "board" is this machine: sshd (``openssh-server``, ``make system-deps``) runs as the
current user on a free port with a throw-away host key and client key, and the board's
python is the pipeline's own (it has ai-edge-litert). Error paths: a closed port, a
wrong key, a changed host key, a python without a runtime, a model the runtime refuses,
and a connection that drops during the run.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.errors import EXIT_DEVICE_UNAVAILABLE, EXIT_OK
from tests.helpers.tiny_tflite import UNKNOWN_OP, int8_add_model, unknown_custom_op_model

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
BOARD_PYTHON = sys.executable


def require_openssh() -> None:
    # No skip: a suite without the server would pass without testing the ssh target.
    if not Path(SSHD).exists() or shutil.which("ssh") is None:
        pytest.fail("these tests run a real OpenSSH server: install openssh-server and openssh-client "
                    "(make system-deps, as root)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


class Sshd:
    """One sshd -D on 127.0.0.1:port with its own config, host key and authorized key."""

    def __init__(self, root: Path, client_pub: Path, port: int):
        self.root, self.port = root, port
        root.mkdir(parents=True, exist_ok=True)
        shutil.copy(client_pub, root / "authorized_keys")
        self.proc = None

    def start(self, host_key: Path) -> "Sshd":
        require_openssh()
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        config = self.root / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
            f"PidFile {self.root / 'sshd.pid'}", f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
            "UsePAM no", "PermitRootLogin prohibit-password", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "StrictModes no", "Subsystem sftp internal-sftp",
            "LogLevel ERROR", ""]))
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"sshd exited: {self.proc.stderr.read().decode()}")
                time.sleep(0.05)
        raise RuntimeError("sshd did not listen within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


def start_board(root: Path):
    """``(sshd, client key)``: an sshd started under ``root`` on a free port, with fresh
    host and client keys (the caller stops it)."""
    key = keygen(root / "client_key")
    sshd = Sshd(root / "sshd", Path(f"{key}.pub"), free_port())
    sshd.start(keygen(root / "host_key"))
    return sshd, key


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A running sshd, the client key, the models and a cache of the tool's own."""
    root = tmp_path_factory.mktemp("board")
    sshd, key = start_board(root)
    models = {"int8": int8_add_model(root / "add_int8.tflite"),
              "custom": unknown_custom_op_model(root / "custom.tflite")}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOBILE_MODEL_REMOTE_CACHE", str(root / "cache"))
        yield {"sshd": sshd, "key": key, "models": models, "root": root}
    sshd.stop()


def run(board, model: Path, *extra, port=None, key=None, python=BOARD_PYTHON):
    url = f"ssh://{os.environ.get('USER', 'root')}@127.0.0.1:{port or board['sshd'].port}"
    args = ["device", "run", str(model), "--target", url, "--identity", str(key or board["key"]),
            "--remote-python", python, "--timed-runs", "5", "--warmup", "2", "-q", *extra]
    if not any(a in extra for a in ("--random", "--inputs", "--data")):
        args += ["--random", "3"]
    return CliRunner(mix_stderr=False).invoke(main, args)


def test_measures_on_the_board_and_agrees_with_the_host(board):
    r = run(board, board["models"]["int8"], "--json")
    assert r.exit_code == EXIT_OK, r.stderr
    d = json.loads(r.stdout)
    t = d["timing"]
    assert d["loaded"] and d["verdict"] == "loads"
    assert all(t[k] > 0 for k in ("init_s", "first_inference_s", "warmup_mean_s", "mean_s", "min_s", "max_s"))
    assert t["runs"] == 5 and t["warmup_runs"] == 2 and t["min_s"] <= t["mean_s"] <= t["max_s"]
    assert t["peak_rss_kib"] > 0
    assert d["runtime"] == "litert" and d["runtime_version"]
    assert d["settings"] == {"threads": 1, "runs": 5, "warmup": 2, "cores": None, "remote_python": BOARD_PYTHON,
                             "runtime": f"litert {d['runtime_version']}"}
    assert d["number_format"] == "int8" and d["host_reference"] == "xnnpack"
    (out,) = d["outputs"]
    assert out["dtype"] == "int8" and out["exact_count"] == out["samples"] == 3 and out["max_abs_diff"] == 0
    assert d["outputs_agree"] is True
    assert d["device"]["kernel"] == os.uname().release
    # Nothing of the run is left on the board but the named cache directory.
    remote_dir = Path(d["remote_dir"])
    assert remote_dir.parent.name == "mobile-model-remote" and remote_dir.parent.is_dir()
    assert not remote_dir.exists()
    listed = CliRunner(mix_stderr=False).invoke(main, ["device", "measured", "--json"])
    rows = json.loads(listed.stdout)
    assert rows[-1]["model_sha256"] == d["model_sha256"] and rows[-1]["number_format"] == "int8"
    assert float(rows[-1]["mean_ms"]) > 0 and rows[-1]["runtime"] == "litert"


def test_a_board_with_tflite_runtime_is_compared_with_that_runtimes_host_build(board):
    from pipeline.devices.host_twin import twin_spec
    from pipeline.devices.targets import RUNTIMES
    from pipeline.store.isolated_env import ensure

    # The isolated environment of tflite-runtime 2.14 (make arm-runtime) stands in for
    # an older board's python: its runtime is the only one it has.
    legacy = ensure(twin_spec(RUNTIMES["tflite-runtime"])).python
    r = run(board, board["models"]["int8"], "--json", "--device", "camera-a53", python=str(legacy))
    assert r.exit_code == EXIT_OK, r.stderr
    d = json.loads(r.stdout)
    assert (d["runtime"], d["runtime_version"], d["profile"]) == ("tflite-runtime", "2.14.0", "camera-a53")
    assert d["host_reference"].startswith("tflite-runtime 2.14.0 ") and d["outputs_agree"] is True


def test_table_states_the_settings_pinned_cores_and_top1_of_labelled_data(board):
    x = np.random.default_rng(1).random((2, 16), dtype=np.float32)
    data = board["root"] / "xy.npz"
    np.savez(data, x=x, y=x.argmax(axis=1))  # y = 2x keeps the arg-max: top-1 is 100%
    r = run(board, board["models"]["int8"], "--data", str(data), "--cores", "0")
    assert r.exit_code == EXIT_OK, r.stderr
    assert "cores 0" in r.stdout and "--timed-runs 5 --warmup 2 --cores 0" in r.stdout
    assert "2/2 bit-exact" in r.stdout and "(measured)" in r.stdout and "top-1               100.00%" in r.stdout


def test_a_model_the_runtime_refuses_is_a_verdict(board):
    r = run(board, board["models"]["custom"], "--json")
    assert r.exit_code == EXIT_OK, r.stderr
    d = json.loads(r.stdout)
    assert not d["loaded"] and d["timing"] is None
    assert d["verdict"] == f"not loadable on litert {d['runtime_version']}: custom op {UNKNOWN_OP}"


def one_line_error(r, *words):
    assert r.exit_code == EXIT_DEVICE_UNAVAILABLE, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert r.stdout == ""
    for w in words:
        assert w in lines[0], lines[0]


def test_connection_refused(board):
    one_line_error(run(board, board["models"]["int8"], port=free_port()), "connection refused")


def test_wrong_key(board):
    other = keygen(board["root"] / "other_key")
    one_line_error(run(board, board["models"]["int8"], key=other), "authentication failed", str(other))


def test_runtime_missing_says_how_to_install_one(board):
    python = shutil.which("python3", path="/usr/bin") or "/usr/bin/python3"
    one_line_error(run(board, board["models"]["int8"], python=python),
                   "no TFLite runtime", "pip install ai-edge-litert", "tflite-runtime")


def test_disconnect_mid_run(board):
    # A board python that, when asked to run the guest script, kills its sshd session.
    wrapper = board["root"] / "dying-python"
    wrapper.write_text(f"#!/bin/sh\ncase \"$1\" in guest_runner.py) kill -9 $(ps -o ppid= -p $PPID);"
                       f" sleep 5;; esac\nexec {BOARD_PYTHON} \"$@\"\n")
    wrapper.chmod(0o755)
    one_line_error(run(board, board["models"]["int8"], python=str(wrapper)), "lost during the run")


def test_host_key_changed(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILE_MODEL_REMOTE_CACHE", str(tmp_path / "cache"))
    key = keygen(tmp_path / "client_key")
    sshd = Sshd(tmp_path / "sshd", Path(f"{key}.pub"), free_port())
    model = int8_add_model(tmp_path / "m.tflite")
    board = {"sshd": sshd, "key": key}
    try:
        sshd.start(keygen(tmp_path / "host_key"))
        assert run(board, model).exit_code == EXIT_OK  # first contact: the key is learnt
        sshd.stop()
        sshd.start(keygen(tmp_path / "new_host_key"))
        one_line_error(run(board, model), "host key", "has changed", "ssh-keygen -R")
    finally:
        sshd.stop()
