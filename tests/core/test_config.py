import pytest
from helpers import REPO, make_teacher

from distill.app.validate import validate
from distill.core.config import apply_override, load_config, parse_config
from distill.core.errors import ConfigError

SYNTH = {"name": "synthetic", "options": {"num_samples": 400, "num_features": 8, "num_classes": 3}}
ALL_CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
COMPRESS = [p for p in ALL_CONFIGS if p.name.startswith("compress_")]
CONFIGS = [p for p in ALL_CONFIGS if p not in COMPRESS]


def test_unknown_keys_suggest_the_nearest_and_all_problems_are_reported():
    data = {
        "student": {"name": "mlp", "argz": {}},
        "trian": {},
        "train": {"epochs": 0, "optimizer": {"lr": -1}},
    }
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    msg = str(err.value)
    assert "4 problem(s)" in msg
    assert "student.argz: unknown key; did you mean 'args'?" in msg
    assert "trian: unknown key; did you mean 'train'?" in msg
    assert "train.epochs: Input should be greater than or equal to 1 (got 0)" in msg
    assert "train.optimizer.lr" in msg


def test_unknown_keys_inside_lists():
    data = {"student": {"name": "mlp"}, "objective": {"terms": [{"loss": "kd", "wieght": 1.0}]}}
    with pytest.raises(
        ConfigError, match=r"objective.terms.0.wieght: unknown key; did you mean 'weight'"
    ):
        parse_config(data)


def test_overrides():
    data = {"student": {"name": "mlp"}, "objective": {"terms": [{"loss": "kd"}]}}
    for assignment in [
        "train.epochs=5",
        "objective.terms.0.weight=0.25",
        "train.optimizer.betas=[0.8, 0.9]",
        "student.args.hidden=[8, 8]",
        "train.clip_grad_norm=",
    ]:
        apply_override(data, assignment)
    cfg = parse_config(data)
    assert cfg.train.epochs == 5 and cfg.objective.terms[0].weight == 0.25
    assert cfg.train.optimizer.betas == (0.8, 0.9) and cfg.student.args["hidden"] == [8, 8]
    assert cfg.train.clip_grad_norm is None
    with pytest.raises(ConfigError, match="not a valid index"):
        apply_override(data, "objective.terms.3.weight=1")
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_override(data, "train.epochs")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_override(data, "train.epochs.x=1")


def test_config_is_frozen():
    cfg = parse_config({"student": {"name": "mlp"}})
    with pytest.raises(Exception, match="frozen"):
        cfg.train.epochs = 3  # type: ignore[misc]


def test_yaml_tags_that_build_objects_are_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("student: !!python/object/apply:os.system ['touch PWNED']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    assert not (tmp_path / "PWNED").exists()


def test_name_problems_are_all_reported():
    cfg = parse_config(
        {
            "scheme": "ofline",
            "data": {"name": "mnist"},
            "student": {"name": "convnett"},
            "objective": {"terms": [{"loss": "kdd", "adapter": "lin"}]},
        }
    )
    problems = "\n".join(validate(cfg))
    for expected in [
        "unknown scheme 'ofline'; did you mean 'offline'",
        "unknown dataset 'mnist'; did you mean 'mnist1d'",
        "unknown model 'convnett'; did you mean 'convnet'",
        "unknown loss 'kdd'; did you mean 'kd'",
        "unknown adapter 'lin'",
    ]:
        assert expected in problems


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_example_config_validates(path, tmp_path):
    cfg = load_config(path)
    overrides = []
    if cfg.teacher is not None:  # stand in an untrained teacher of the configured shape
        from distill.app.build import build
        from distill.core.checkpoint import save_weights

        teacher_only = load_config(path, ["scheme=supervised", "objective.terms=[]"])
        teacher_only = parse_config(
            {**teacher_only.model_dump(), "student": {**cfg.teacher.model_dump(), "weights": None}}
        )
        save_weights(tmp_path / "t.safetensors", build(teacher_only).student)
        overrides.append(f"teacher.weights={tmp_path / 't.safetensors'}")
    assert validate(load_config(path, overrides)) == []


def test_mistyped_layer_name_fails_validate_with_suggestion(tmp_path):
    teacher = make_teacher(tmp_path / "t.safetensors")
    data = {
        "scheme": "offline",
        "data": SYNTH,
        "student": {"name": "mlp", "args": {"hidden": [16]}},
        "teacher": {"name": "mlp", "args": {"hidden": [32, 32]}, "weights": str(teacher)},
        "objective": {
            "terms": [
                {"loss": "mse", "student": "blocks.O", "teacher": "blokcs.1", "adapter": "linear"}
            ]
        },
    }
    problems = validate(parse_config(data))
    assert len(problems) == 2
    assert "unknown layer 'blocks.O' in student mlp; did you mean 'blocks.0'" in problems[0]
    assert "unknown layer 'blokcs.1' in teacher mlp; did you mean 'blocks.1'" in problems[1]


def test_shape_mismatch_without_adapter_is_reported(tmp_path):
    teacher = make_teacher(tmp_path / "t.safetensors")
    data = {
        "scheme": "offline",
        "data": SYNTH,
        "student": {"name": "mlp", "args": {"hidden": [16]}},
        "teacher": {"name": "mlp", "args": {"hidden": [32, 32]}, "weights": str(teacher)},
        "objective": {"terms": [{"loss": "mse", "student": "blocks.0", "teacher": "blocks.1"}]},
    }
    [problem] = validate(parse_config(data))
    assert "student 'blocks.0' (4, 16) vs teacher 'blocks.1' (4, 32)" in problem
    assert "adapter: linear" in problem
    data["objective"]["terms"][0]["args"] = {"temperature": 2.0}
    data["objective"]["terms"][0]["adapter"] = "linear"
    data["objective"]["terms"].append({"loss": "kd", "student": "blocks.0", "teacher": "blocks.1"})
    [problem] = validate(parse_config(data))  # both bad terms reported in one go
    assert "objective.terms.0.args: loss 'mse' has no argument 'temperature'" in problem
    assert (
        "objective.terms.1 (kd: student 'blocks.0' (4, 16) vs teacher 'blocks.1' (4, 32))"
        in problem
    )


def test_teacher_weights_that_do_not_fit(tmp_path):
    teacher = make_teacher(tmp_path / "t.safetensors", {"hidden": [8]})
    data = {
        "scheme": "offline",
        "data": SYNTH,
        "student": {"name": "mlp"},
        "teacher": {"name": "mlp", "args": {"hidden": [32, 32]}, "weights": str(teacher)},
        "objective": {"terms": [{"loss": "kd"}]},
    }
    [problem] = validate(parse_config(data))
    assert "weights do not fit the teacher 'mlp'" in problem


@pytest.mark.parametrize("path", COMPRESS, ids=[p.name for p in COMPRESS])
def test_compression_configs_validate(path, tmp_path):
    """The compression configs load, and every stage's experiment is a valid run config."""
    from distill.compress.pipeline import Compressor, load_compress_config

    cfg = load_compress_config(path, [f"run_dir={tmp_path}"])
    compressor = Compressor(cfg, progress=False)
    spec = {"name": "mlp", "args": {}, "weights": str(tmp_path / "w.safetensors")}
    for stage in cfg.stages:
        teacher = spec if stage.teacher else None
        exp = compressor._experiment(
            stage.model.model_dump() if stage.model else None, teacher, tmp_path / stage.name, stage
        )
        parse_config(exp, stage.name)
