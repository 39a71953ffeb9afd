"""utils/config.py: defaults, YAML files with BASE inheritance, MODEL_CONFIG_PATH, --opts,
and the errors that name the offending key and file."""
import os

import pytest

from utils.config import config_to_yaml, get_defaults, load_config


def write(path, text):
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def test_defaults_without_a_file():
    config = load_config(None)
    defaults = get_defaults()
    assert config.TRAIN.EPOCHS == defaults.TRAIN.EPOCHS == 300
    assert config.DATA.DATASET == "ImageNet-1K"
    assert config.MODEL.NUM_CLASSES == 0
    assert config.SEED == 0


def test_get_defaults_is_a_copy():
    a = get_defaults()
    a.TRAIN.EPOCHS = 1
    assert get_defaults().TRAIN.EPOCHS == 300


def test_yaml_overrides_only_what_it_names(tmp_path):
    path = write(tmp_path / "c.yaml", "TRAIN:\n  EPOCHS: 7\n  OPTIMIZER:\n    NAME: sgd\nSEED: 3\n")
    config = load_config(path)
    assert config.TRAIN.EPOCHS == 7
    assert config.TRAIN.OPTIMIZER.NAME == "sgd"
    assert config.SEED == 3
    # untouched siblings keep their defaults
    assert config.TRAIN.WARMUP_EPOCHS == 20
    assert config.TRAIN.OPTIMIZER.MOMENTUM == 0.9


def test_yaml_list_into_tuple_key(tmp_path):
    path = write(tmp_path / "c.yaml", "AUG:\n  RANDOM_RESIZED_CROP_SCALE: [0.5, 1.0]\n")
    config = load_config(path)
    assert tuple(config.AUG.RANDOM_RESIZED_CROP_SCALE) == (0.5, 1.0)


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    # PyYAML reads 1e-3 as a string; recipes write learning rates that way
    path = write(tmp_path / "c.yaml", "TRAIN:\n  BASE_LR: 1e-3\n  WEIGHT_DECAY: 5e-05\n")
    config = load_config(path)
    assert isinstance(config.TRAIN.BASE_LR, float) and config.TRAIN.BASE_LR == 1e-3
    assert config.TRAIN.WEIGHT_DECAY == 5e-05


def test_empty_yaml_file_gives_defaults(tmp_path):
    path = write(tmp_path / "empty.yaml", "")
    assert load_config(path).TRAIN.EPOCHS == 300


def test_result_is_frozen(tmp_path):
    config = load_config(write(tmp_path / "c.yaml", "SEED: 1\n"))
    assert config.is_frozen()
    with pytest.raises(AttributeError):
        config.SEED = 2
    with pytest.raises(AttributeError):
        config.TRAIN.EPOCHS = 2


def test_base_relative_to_the_including_file(tmp_path):
    write(tmp_path / "base" / "base.yaml", "TRAIN:\n  EPOCHS: 11\n  BASE_LR: 0.5\nSEED: 5\n")
    child = write(tmp_path / "sub" / "child.yaml", "BASE: ['../base/base.yaml']\nTRAIN:\n  EPOCHS: 22\n")
    config = load_config(child)
    assert config.TRAIN.EPOCHS == 22  # the child wins
    assert config.TRAIN.BASE_LR == 0.5  # inherited
    assert config.SEED == 5


def test_base_multiple_levels_and_several_bases(tmp_path):
    write(tmp_path / "a" / "grand.yaml", "SEED: 1\nPRINT_FREQ: 1\nSAVE_FREQ: 1\nOUTPUT: grand\n")
    write(tmp_path / "a" / "parent.yaml", "BASE: ['grand.yaml']\nPRINT_FREQ: 2\nSAVE_FREQ: 2\n")
    write(tmp_path / "other.yaml", "SAVE_FREQ: 3\nOUTPUT: other\n")
    child = write(tmp_path / "child.yaml", "BASE: ['a/parent.yaml', 'other.yaml']\nSAVE_FREQ: 4\n")
    config = load_config(child)
    assert config.SEED == 1  # from the grandparent
    assert config.PRINT_FREQ == 2  # the parent overrides the grandparent
    assert config.OUTPUT == "other"  # a later base overrides an earlier one
    assert config.SAVE_FREQ == 4  # the file itself overrides all its bases
    assert config.BASE == [""]  # the BASE key itself is not kept


def test_diamond_inheritance_is_not_a_loop(tmp_path):
    write(tmp_path / "root.yaml", "SEED: 9\n")
    write(tmp_path / "left.yaml", "BASE: ['root.yaml']\nPRINT_FREQ: 3\n")
    write(tmp_path / "right.yaml", "BASE: ['root.yaml']\nSAVE_FREQ: 4\n")
    top = write(tmp_path / "top.yaml", "BASE: ['left.yaml', 'right.yaml']\n")
    config = load_config(top)
    assert (config.SEED, config.PRINT_FREQ, config.SAVE_FREQ) == (9, 3, 4)


def test_base_loop_is_detected(tmp_path):
    write(tmp_path / "a.yaml", "BASE: ['b.yaml']\nSEED: 1\n")
    write(tmp_path / "b.yaml", "BASE: ['c.yaml']\n")
    write(tmp_path / "c.yaml", "BASE: ['a.yaml']\n")
    with pytest.raises(ValueError, match="loop"):
        load_config(str(tmp_path / "a.yaml"))


def test_base_self_loop_is_detected(tmp_path):
    path = write(tmp_path / "self.yaml", "BASE: ['self.yaml']\n")
    with pytest.raises(ValueError, match="loop"):
        load_config(path)


def test_base_as_a_string_is_accepted_or_named(tmp_path):
    write(tmp_path / "base.yaml", "SEED: 4\n")
    child = write(tmp_path / "child.yaml", "BASE: base.yaml\n")
    try:
        config = load_config(child)
    except Exception as e:  # a refusal is fine if it says what is wrong
        assert "BASE" in str(e)
    else:
        assert config.SEED == 4


def test_unknown_key_names_dotted_key_and_file(tmp_path):
    path = write(tmp_path / "c.yaml", "TRAIN:\n  OPTIMIZER:\n    NAMEE: sgd\n")
    with pytest.raises(KeyError) as info:
        load_config(path)
    message = str(info.value)
    assert "TRAIN.OPTIMIZER.NAMEE" in message
    assert path in message


def test_errors_name_the_line_in_one_line(tmp_path):
    path = write(tmp_path / "c.yaml", "SEED: 1\nTRAIN:\n  OPTIMIZER:\n    NAME: sgd\n    NAMEE: sgd\n")
    with pytest.raises(KeyError) as info:
        load_config(path)
    assert info.value.args[0] == f"{path}:5: unknown config key TRAIN.OPTIMIZER.NAMEE"
    path = write(tmp_path / "y.yaml", "SEED: 1\nTRAIN: {EPOCHS: [1,\n")
    with pytest.raises(ValueError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:3: not valid YAML: ") and "\n" not in str(info.value)


def test_unknown_top_level_key(tmp_path):
    # the paper's configs had DATA.TRAIN_SiZE: typos must not pass silently
    path = write(tmp_path / "c.yaml", "DATA:\n  TRAIN_SiZE: 5\n")
    with pytest.raises(KeyError) as info:
        load_config(path)
    assert "DATA.TRAIN_SiZE" in str(info.value) and path in str(info.value)


def test_unknown_key_in_base_names_the_base_file(tmp_path):
    base = write(tmp_path / "bases" / "base.yaml", "MODEL:\n  SWIN:\n    WINDOWSIZE: 7\n")
    child = write(tmp_path / "child.yaml", "BASE: ['bases/base.yaml']\nSEED: 2\n")
    with pytest.raises(KeyError) as info:
        load_config(child)
    message = str(info.value)
    assert "MODEL.SWIN.WINDOWSIZE" in message
    assert os.path.abspath(base) in message
    assert "child.yaml" not in message


def test_value_key_used_as_section(tmp_path):
    path = write(tmp_path / "c.yaml", "SEED:\n  X: 1\n")
    with pytest.raises(KeyError) as info:
        load_config(path)
    assert "SEED" in str(info.value) and path in str(info.value)


def test_type_mismatch_names_the_file(tmp_path):
    path = write(tmp_path / "c.yaml", "TRAIN:\n  EPOCHS: abc\n")
    with pytest.raises(ValueError) as info:
        load_config(path)
    assert path in str(info.value)
    assert "EPOCHS" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))


def test_missing_base_file_is_named(tmp_path):
    child = write(tmp_path / "child.yaml", "BASE: ['gone.yaml']\n")
    with pytest.raises(FileNotFoundError, match="gone.yaml"):
        load_config(child)


def test_not_a_mapping(tmp_path):
    path = write(tmp_path / "c.yaml", "- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(path)


def test_invalid_yaml_names_the_file(tmp_path):
    path = write(tmp_path / "c.yaml", "TRAIN: [unclosed\n")
    with pytest.raises(ValueError) as info:
        load_config(path)
    assert path in str(info.value)


def test_opts_override_file(tmp_path):
    path = write(tmp_path / "c.yaml", "TRAIN:\n  EPOCHS: 7\n")
    config = load_config(path, ["TRAIN.EPOCHS", "9", "DATA.DATA_PATH_TRAIN", "/data/x", "AUG.MIXUP", "0.0"])
    assert config.TRAIN.EPOCHS == 9
    assert config.DATA.DATA_PATH_TRAIN == "/data/x"
    assert config.AUG.MIXUP == 0.0


def test_opts_list_value():
    config = load_config(None, ["TRAIN.LR_SCHEDULER.MULTISTEPS", "[3, 6]"])
    assert list(config.TRAIN.LR_SCHEDULER.MULTISTEPS) == [3, 6]


def test_opts_numeric_looking_string_value():
    config = load_config(None, ["OUTPUT", "2024", "MODEL.NAME", "123"])
    assert config.OUTPUT == "2024"
    assert config.MODEL.NAME == "123"


def test_yaml_quoted_string_stays_a_string(tmp_path):
    path = write(tmp_path / "c.yaml", "OUTPUT: '2024'\nDATA:\n  DATA_PATH_TRAIN: '[1, 2]'\n")
    config = load_config(path)
    assert config.OUTPUT == "2024"
    assert config.DATA.DATA_PATH_TRAIN == "[1, 2]"


def test_unknown_opts_key_is_named():
    with pytest.raises(KeyError, match="TRAIN.EPOCHZ"):
        load_config(None, ["TRAIN.EPOCHZ", "3"])
    with pytest.raises(KeyError, match="NOPE.X"):
        load_config(None, ["NOPE.X", "3"])
    # a path through a value (SEED is not a section)
    with pytest.raises(KeyError, match="SEED.X"):
        load_config(None, ["SEED.X", "3"])


def test_odd_opts_count():
    with pytest.raises(ValueError, match="odd"):
        load_config(None, ["TRAIN.EPOCHS", "3", "SEED"])


def test_opts_type_mismatch_names_key():
    with pytest.raises(ValueError, match="TRAIN.EPOCHS"):
        load_config(None, ["TRAIN.EPOCHS", "abc"])


def test_model_config_path_relative_to_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the config's folder
    write(tmp_path / "cfgs" / "models" / "tiny.yaml",
          "MODEL:\n  SWIN:\n    EMBED_DIM: 48\n    DEPTHS: [1, 1]\n    NUM_HEADS: [2, 4]\n")
    main = write(tmp_path / "cfgs" / "main.yaml",
                 "MODEL:\n  MODEL_CONFIG_PATH: models/tiny.yaml\n  SWIN:\n    WINDOW_SIZE: 4\n")
    config = load_config(main)
    assert config.MODEL.SWIN.EMBED_DIM == 48
    assert list(config.MODEL.SWIN.DEPTHS) == [1, 1]
    assert config.MODEL.SWIN.WINDOW_SIZE == 4  # from the main file, untouched by the model file


def test_model_config_path_not_shadowed_by_working_directory(tmp_path, monkeypatch):
    # the same config must give the same model wherever it is run from
    write(tmp_path / "cfgs" / "models" / "tiny.yaml", "MODEL:\n  SWIN:\n    EMBED_DIM: 48\n")
    write(tmp_path / "elsewhere" / "models" / "tiny.yaml", "MODEL:\n  SWIN:\n    EMBED_DIM: 1024\n")
    main = write(tmp_path / "cfgs" / "main.yaml", "MODEL:\n  MODEL_CONFIG_PATH: models/tiny.yaml\n")
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert load_config(main).MODEL.SWIN.EMBED_DIM == 48


def test_opts_win_over_model_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "cfgs" / "models" / "tiny.yaml", "MODEL:\n  SWIN:\n    EMBED_DIM: 48\n    MLP_RATIO: 2.0\n")
    main = write(tmp_path / "cfgs" / "main.yaml", "MODEL:\n  MODEL_CONFIG_PATH: models/tiny.yaml\n")
    config = load_config(main, ["MODEL.SWIN.EMBED_DIM", "64"])
    assert config.MODEL.SWIN.EMBED_DIM == 64
    assert config.MODEL.SWIN.MLP_RATIO == 2.0
    assert config.is_frozen()


def test_model_config_path_given_by_opts(tmp_path):
    model = write(tmp_path / "m.yaml", "MODEL:\n  CONVNEXT:\n    DIMS: [8, 16, 32, 64]\n")
    config = load_config(None, ["MODEL.MODEL_CONFIG_PATH", model])
    assert list(config.MODEL.CONVNEXT.DIMS) == [8, 16, 32, 64]


def test_unknown_key_in_model_config_names_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = write(tmp_path / "cfgs" / "m.yaml", "MODEL:\n  SWIN:\n    EMBED_DIMS: 48\n")
    main = write(tmp_path / "cfgs" / "main.yaml", "MODEL:\n  MODEL_CONFIG_PATH: m.yaml\n")
    with pytest.raises(KeyError) as info:
        load_config(main)
    assert "MODEL.SWIN.EMBED_DIMS" in str(info.value)
    assert os.path.abspath(model) in str(info.value)


def test_yaml_dump_round_trip(tmp_path):
    config = load_config(None, ["TRAIN.EPOCHS", "5", "DATA.DATASET", "custom"])
    dumped = write(tmp_path / "dump.yaml", config_to_yaml(config))
    again = load_config(dumped)
    assert again == config


def test_demo_config_loads():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = load_config(os.path.join(root, "configs", "demo-mnist.yaml"))
    assert config.MODEL.NUM_CLASSES == 10
    assert config.DATA.DATASET == "custom"
    assert config.AUG.HORIZONTAL_FLIP is False
