"""The GitHub Actions workflow parses and calls only CLI subcommands and options that exist."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

WORKFLOW = Path(__file__).resolve().parents[2] / ".github" / "workflows" / "nas-search.yml"

#: Pipeline options shared by run/submit/schedule that the workflow may use.
PIPELINE_OPTIONS = {
    "--dataset", "--search-space", "--strategy", "--max-trials", "--epochs", "--train-epochs",
    "--seed", "--tracking-uri", "--model-name", "--experiment",
}
REMOTE_OPTIONS = {"--host", "--experiment-name", "--package", "--param", "--token-env"}
#: The CLI contract (nasflow.cli): subcommand -> options the workflow may pass. Keep in step with
#: the CLI; test_every_nasflow_call_parses_with_the_real_cli checks the CLI still accepts them.
CLI_OPTIONS: dict[str, set[str]] = {
    "run": PIPELINE_OPTIONS | {"--workers", "--output-dir"},
    "compile": {"--output"},
    "submit": PIPELINE_OPTIONS | REMOTE_OPTIONS | {"--wait", "--timeout-minutes", "--poll-seconds", "--output-file"},
    "schedule": PIPELINE_OPTIONS | REMOTE_OPTIONS | {"--cron", "--job-name"},
    "promote": {"--model-name", "--version", "--tracking-uri", "--min-improvement", "--metric"},
    "validate": set(),
}


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _check_workflow_schema(path: Path) -> subprocess.CompletedProcess:
    """check-jsonschema with the GitHub Actions workflow schema it ships (no download)."""
    checker = Path(sys.executable).parent / "check-jsonschema"
    return subprocess.run(
        [str(checker), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_workflow_matches_the_github_actions_schema(tmp_path):
    result = _check_workflow_schema(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    # The schema is strict enough to catch a misspelt key.
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on:", "run-on:", 1))
    assert _check_workflow_schema(broken).returncode == 1


def _steps(workflow: dict, job: str) -> list[dict]:
    return workflow["jobs"][job]["steps"]


def _nasflow_calls(workflow: dict) -> list[list[str]]:
    calls = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            script = step.get("run", "")
            # GitHub expressions: use the `|| default` when there is one, else one opaque token.
            script = re.sub(r"\$\{\{[^}]*\|\|\s*'?([^'}\s]+)'?\s*\}\}", r"\1", script)
            script = re.sub(r"\$\{\{.*?\}\}", "EXPR", script)
            for line in script.replace("\\\n", " ").splitlines():
                words = shlex.split(line)
                for i, word in enumerate(words):
                    if word == "nasflow" or word.endswith("/nasflow"):
                        calls.append(words[i + 1 :])
    return calls


def test_triggers(workflow):
    # PyYAML reads the bare key `on` as True.
    triggers = workflow.get("on", workflow.get(True))
    assert set(triggers) == {"pull_request", "push", "workflow_dispatch"}
    assert triggers["push"]["branches"] == ["main"]
    assert set(triggers["workflow_dispatch"]["inputs"]) == {"strategy", "max_trials", "epochs"}


def test_pull_request_job_tests_compiles_and_smoke_searches(workflow):
    job = workflow["jobs"]["test"]
    assert "pull_request" in job["if"]
    steps = _steps(workflow, "test")
    setup = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python"))
    assert setup["with"]["python-version"] == "3.11"
    scripts = [s.get("run", "") for s in steps]
    assert any(s.strip() == "make test" for s in scripts)
    assert any(s.strip() == "make test-slow" for s in scripts), "the slow tier runs on every pull request too"
    assert any("nasflow compile" in s for s in scripts)
    smoke = next(s for s in scripts if "nasflow run" in s)
    for option in ("--dataset digits", "--max-trials 2", "--epochs 1", "--train-epochs 1"):
        assert option in " ".join(smoke.split())


def test_main_job_submits_then_gates(workflow):
    job = workflow["jobs"]["search"]
    assert "push" in job["if"] and "workflow_dispatch" in job["if"]
    steps = _steps(workflow, "search")
    names = [s.get("run", "") for s in steps]
    submit = next(i for i, s in enumerate(names) if "nasflow submit" in s)
    promote = next(i for i, s in enumerate(names) if "nasflow promote" in s)
    assert submit < promote
    assert "${{ secrets.KFP_HOST }}" in names[submit]
    assert steps[submit]["env"]["KFP_BEARER_TOKEN"] == "${{ secrets.KFP_BEARER_TOKEN }}"
    assert "--tracking-uri ${{ secrets.MLFLOW_TRACKING_URI }}" in " ".join(names[promote].split())
    for name in ("strategy", "max_trials", "epochs"):
        assert f"inputs.{name}" in names[submit]


def test_gate_promotes_exactly_the_version_its_run_registered(workflow):
    steps = _steps(workflow, "search")
    submit = next(s for s in steps if "nasflow submit" in s.get("run", ""))
    promote = next(s for s in steps if "nasflow promote" in s.get("run", ""))
    submit_words = shlex.split(submit["run"])
    assert "--wait" in submit_words
    assert submit_words[submit_words.index("--output-file") + 1] == "$GITHUB_OUTPUT"
    # The submit step reads the run's MLflow parent run, so it needs the tracking server.
    assert submit["env"]["MLFLOW_TRACKING_URI"] == "${{ secrets.MLFLOW_TRACKING_URI }}"
    gate = " ".join(promote["run"].split())
    assert f"--version ${{{{ steps.{submit['id']}.outputs.model_version }}}}" in gate
    assert f"--model-name ${{{{ steps.{submit['id']}.outputs.model_name }}}}" in gate


def test_every_nasflow_call_uses_known_subcommands_and_options(workflow):
    calls = _nasflow_calls(workflow)
    assert {call[0] for call in calls} == {"run", "compile", "submit", "promote"}
    for call in calls:
        subcommand, args = call[0], call[1:]
        assert subcommand in CLI_OPTIONS, call
        options = {a.split("=", 1)[0] for a in args if a.startswith("--")}
        assert options <= CLI_OPTIONS[subcommand], f"{subcommand}: unknown {options - CLI_OPTIONS[subcommand]}"
        params = [args[i + 1] for i, a in enumerate(args) if a == "--param"]
        assert all(re.fullmatch(r"\w+=\S+", p) for p in params), params


def test_every_nasflow_call_parses_with_the_real_cli(workflow):
    cli = pytest.importorskip("nasflow.cli.main")
    parser = cli.build_parser()
    for call in _nasflow_calls(workflow):
        args = parser.parse_args(call)  # argparse exits (SystemExit) on an unknown option
        assert args.command == call[0]
        for item in getattr(args, "param", []):
            assert item.partition("=")[0] in cli.pipeline_parameter_names(), item


def test_dispatch_strategies_are_real_strategies(workflow):
    search = pytest.importorskip("nasflow.search")
    triggers = workflow.get("on", workflow.get(True))
    strategy = triggers["workflow_dispatch"]["inputs"]["strategy"]
    assert set(strategy["options"]) <= set(search.STRATEGIES)
    assert strategy["default"] in strategy["options"]


def test_no_secret_is_echoed_or_hard_coded(workflow):
    text = WORKFLOW.read_text()
    assert not re.search(r"(?i)(token|password)\s*[:=]\s*['\"]?[A-Za-z0-9]{8,}", text.replace("secrets.", ""))
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            assert "echo ${{ secrets" not in step.get("run", "")
