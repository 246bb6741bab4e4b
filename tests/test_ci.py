"""The CI configuration reports: `make test` writes JUnit XML, and the example GitHub
workflow has the permissions, caching, triggers and uploads that the README promises.

Reads the Makefile and the workflow as text / YAML: nothing is run.
"""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "mobile-model.yml"


def _workflow():
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def _steps():
    (job,) = _workflow()["jobs"].values()
    return job["steps"]


def test_make_test_writes_junit_xml_to_build_test_results():
    text = (REPO / "Makefile").read_text()
    recipe = text.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "TEST_RESULTS ?= build/test-results" in text
    assert re.search(r"pytest tests device_tests .*--junitxml=\$\(TEST_RESULTS\)/pytest\.xml", recipe)
    assert "if [ $$rc = 5 ]" in recipe  # no tests collected is a failure, not a pass


def test_workflow_declares_the_permissions_its_junit_steps_need():
    perms = _workflow()["permissions"]
    assert perms == {"contents": "read", "checks": "write"}
    junit = [s for s in _steps() if str(s.get("uses", "")).startswith("mikepenz/action-junit-report")]
    reports = {s["with"]["report_paths"] for s in junit}
    assert reports == {"build/test-results/pytest.xml", "build/default/compare-junit.xml"}


def test_workflow_saves_caches_even_when_the_gate_fails():
    steps = _steps()
    uses = [str(s.get("uses", "")) for s in steps]
    assert not any(u.startswith("actions/cache@") for u in uses), "one combined cache step saves only on success"
    restore = uses.index("actions/cache/restore@v4")
    save = uses.index("actions/cache/save@v4")
    gate = next(i for i, s in enumerate(steps) if s.get("run") == "make check-regressions")
    assert restore < gate < save
    assert "always()" in steps[save]["if"]
    assert steps[save]["with"]["path"] == steps[restore]["with"]["path"]
    assert steps[save]["with"]["key"] == "${{ steps.cache-restore.outputs.cache-primary-key }}"


def test_workflow_runs_once_per_pull_request():
    on = _workflow()["on"]
    assert "pull_request" in on
    assert on["push"] == {"branches": ["main"]}  # a PR's pushes are not also run as branch pushes
    assert _workflow()["concurrency"]["cancel-in-progress"] is True


def test_workflow_uploads_test_results_report_and_bundle():
    uploads = {s["with"]["name"]: s["with"]["path"] for s in _steps()
               if str(s.get("uses", "")).startswith("actions/upload-artifact")}
    assert "build/test-results/" in uploads["mobile-model-test-results"]
    assert "build/default/report.html" in uploads["mobile-model-report"]
    assert uploads["mobile-model-bundle"] == "build/default/bundle/"
    for step in _steps():
        if str(step.get("uses", "")).startswith("actions/upload-artifact"):
            assert step["if"] == "${{ !cancelled() }}"  # uploaded when tests or the gate fail too
