"""Config loading: YAML layering, dotted overrides, validation errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from spinelab.config.load import apply_overrides, load_config, read_run_config, save_config
from spinelab.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_validate_for_both_tasks() -> None:
    assert load_config("cervical").stage2.n_slices == 24
    assert load_config("lumbar").task == "lumbar"


def test_files_layer_then_overrides_win(tmp_path: Path) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text("stage1:\n  image_size: 80\n  train: {epochs: 7}\n")
    cfg = load_config("cervical", [REPO / "src/spinelab/configs/cervical/tiny.yaml", extra],
                      ["stage1.train.epochs=3", "stage2.windows=[[40, 400], [400, 1800]]"])
    assert cfg.stage1.image_size == 80  # second file overrides the first
    assert cfg.stage1.train.epochs == 3  # the override beats both files
    assert cfg.stage1.model.name == "test_cervical_slice_localizer"  # untouched keys survive the merge
    assert cfg.stage2.windows == [(40.0, 400.0), (400.0, 1800.0)]


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"stage1\.trian"):
        load_config("cervical", [], ["stage1.trian.epochs=3"])


def test_wrong_type_is_named() -> None:
    with pytest.raises(ConfigError, match=r"stage1\.train\.epochs"):
        load_config("cervical", [], ["stage1.train.epochs=many"])


def test_missing_file_and_wrong_task(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("cervical", [tmp_path / "nope.yaml"])
    other = tmp_path / "lumbar.yaml"
    other.write_text("task: lumbar\n")
    with pytest.raises(ConfigError, match="for task 'lumbar'"):
        load_config("cervical", [other])


def test_override_syntax_errors() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["stage1.train.epochs"])
    with pytest.raises(ConfigError, match="is not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_every_shipped_recipe_validates() -> None:
    recipes = sorted((REPO / "src/spinelab/configs").glob("*/*.yaml"))
    assert len(recipes) >= 4
    for path in recipes:
        cfg = load_config(path.parent.name, [path])
        assert cfg.task == path.parent.name


def test_run_config_round_trip(tmp_path: Path) -> None:
    cfg = load_config("cervical", [REPO / "src/spinelab/configs/cervical/tiny.yaml"], ["experiment=roundtrip"])
    save_config(cfg, tmp_path / "config.yaml")
    again = read_run_config(tmp_path)
    assert again == cfg
    with pytest.raises(ConfigError, match="not found"):
        read_run_config(tmp_path / "missing")


def test_run_config_of_spinelab_0_1_is_still_read(tmp_path: Path) -> None:
    import yaml

    save_config(load_config("cervical"), tmp_path / "config.yaml")
    data = yaml.safe_load((tmp_path / "config.yaml").read_text())
    data["infer"] = {"device": "auto", "tta_flip": False, "batch_size": 16}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    assert read_run_config(tmp_path).infer.tta is False


def test_run_config_with_train_validate_is_read_as_validation(tmp_path: Path) -> None:
    import yaml

    save_config(load_config("cervical"), tmp_path / "config.yaml")
    data = yaml.safe_load((tmp_path / "config.yaml").read_text())
    data["frames"]["train"].pop("validation")
    data["frames"]["train"]["validate"] = "last_epoch"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    cfg = read_run_config(tmp_path)
    assert cfg.frames.train.validation == "last_epoch" and cfg.stage1.train.validation == "every_epoch"


PLANTED = "task: cervical\nexperiment: !!python/object/apply:os.system ['touch {marker}']\n"


def test_python_tag_in_a_recipe_is_a_one_line_error(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(PLANTED.format(marker=marker))
    with pytest.raises(ConfigError, match=r"recipe.yaml: invalid YAML \(line 2\).*python/object") as err:
        load_config("cervical", [recipe])
    assert "\n" not in str(err.value) and not marker.exists()


def test_python_tag_in_a_run_config_is_a_one_line_error(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "config.yaml").write_text(PLANTED.format(marker=marker))
    with pytest.raises(ConfigError, match=r"config.yaml: invalid YAML") as err:
        read_run_config(tmp_path)
    assert "\n" not in str(err.value) and not marker.exists()


def test_keep_and_folds_file_fields() -> None:
    cfg = load_config("lumbar", [], ["stage2.train.keep=model", "data.folds_file=/tmp/f.csv"])
    assert cfg.stage2.train.keep == "model" and cfg.stage1.train.keep == "last"
    assert str(cfg.data.folds_file) == "/tmp/f.csv"
    with pytest.raises(ConfigError, match="stage1.train.keep"):
        load_config("lumbar", [], ["stage1.train.keep=some"])


def test_a_partial_section_keeps_the_fields_own_defaults() -> None:
    # frames.train defaults to batches of 32 without EMA; TrainConfig's class defaults are batch 4 and EMA.
    cfg = load_config("cervical", [], ["frames.train.epochs=2"])
    assert (cfg.frames.train.epochs, cfg.frames.train.batch_size, cfg.frames.train.ema) == (2, 32, None)
    cfg = load_config("cervical", [], ["stage2.model.hidden=32"])
    assert (cfg.stage2.model.name, cfg.stage2.model.hidden) == ("cervical_fracture_classifier", 32)
    # a saved config (every field set) loads back unchanged
    again = type(cfg).model_validate(cfg.model_dump())
    assert again == cfg
