"""The nasflow command line: subcommands, validation of options, one-line errors."""

from __future__ import annotations

import pytest

from nasflow.cli.main import build_parser, main, pipeline_parameters
from pipelines.nas_pipeline import nas_pipeline


def test_every_pipeline_parameter_has_an_option_with_the_pipeline_default():
    inputs = nas_pipeline.component_spec.inputs
    params = pipeline_parameters(build_parser().parse_args(["run"]))
    assert set(params) == set(inputs)
    for name, value in params.items():
        assert value == inputs[name].default, name


def test_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in nas_pipeline.component_spec.inputs:
        assert f"--{name.replace('_', '-')}" in text, name
    assert "(default: 8)" in text and "One of: random" in text
    assert "auto (10 % of the budget from 100 trials on)" in text, "a docstring's % is printed as it is"


def test_component_defaults_never_disagree_with_the_pipeline():
    """A component repeats no default the pipeline owns: every input the pipeline wires has none."""
    import components

    for name in components.__all__:
        spec = getattr(components, name).component_spec
        for input_name, input_spec in (spec.inputs or {}).items():
            if input_name in nas_pipeline.component_spec.inputs and input_spec.default is not None:
                assert input_spec.default == nas_pipeline.component_spec.inputs[input_name].default, (name, input_name)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["run", "--max-trials", "0"], "max_trials must be at least 1"),
        (["run", "--strategy", "grid"], "strategy 'grid' is unknown"),
        (["run", "--max-accuracy-drop", "-1"], "must be >= 0"),
        (["run", "--objective", "reward"], "needs cost_target"),
        (["run", "--prefer", "speed"], "unknown preference"),
    ],
)
def test_bad_parameters_are_refused_before_anything_is_created(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--output-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nasflow: run:") and message in err[0], err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_malformed_number_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["run", "--epochs", "x"])
    assert caught.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


def test_validate_prints_size(capsys):
    from nasflow.config import repo_root

    assert main(["validate", str(repo_root() / "search_spaces" / "cnn.yaml")]) == 0
    out = capsys.readouterr().out
    assert "valid cnn space" in out and "continuous" in out


@pytest.mark.parametrize("name", ["mobile_cnn", "mlp.yaml"])
def test_validate_takes_a_bundled_name_like_search_space_does(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not found relative to the working folder
    assert main(["validate", name]) == 0
    assert f"{name}: valid" in capsys.readouterr().out


def test_validate_counts_a_discrete_space(tmp_path, capsys):
    space = tmp_path / "small.yaml"
    space.write_text(
        "name: small\nfamily: mlp\nmodality: tabular\nhyperparameters:\n"
        "  - {name: num_layers, type: int, min: 1, max: 2}\n"
        "  - repeat:\n      count: num_layers\n      hyperparameters:\n"
        "        - {name: units, type: choice, values: [8, 16]}\n"
        "  - {name: activation, type: choice, values: [relu, tanh]}\n"
        "  - {name: learning_rate, type: fixed, value: 0.001}\n"
    )
    assert main(["validate", str(space)]) == 0
    # 1 layer: 2 unit choices; 2 layers: 4; times 2 activations.
    assert "12 distinct architectures" in capsys.readouterr().out


def test_validate_bad_file_is_one_line(tmp_path, capsys):
    space = tmp_path / "bad.yaml"
    space.write_text("name: x\nfamily: resnet\nmodality: image\nhyperparameters: []\n")
    assert main(["validate", str(space)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nasflow: validate:") and "bad.yaml" in err[0]


def test_compile_writes_yaml(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    assert main(["compile", "--output", str(out)]) == 0
    assert "pipelineInfo" in out.read_text()


def test_submit_with_bad_param_is_rejected(tmp_path, capsys):
    package = tmp_path / "p.yaml"
    main(["compile", "--output", str(package)])
    code = main(["submit", "--host", "http://127.0.0.1:9", "--package", str(package), "--param", "nonsense=1"])
    assert code == 2
    assert "--param" in capsys.readouterr().err


def test_one_default_strategy_everywhere():
    from nasflow.search.settings import DEFAULT_STRATEGY, SearchSettings

    args = build_parser().parse_args(["run"])
    assert args.strategy == DEFAULT_STRATEGY == SearchSettings().strategy
    assert nas_pipeline.component_spec.inputs["strategy"].default == DEFAULT_STRATEGY
