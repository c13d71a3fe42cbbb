import pytest

from abcrown_plugins.config import build_config, default_config, dump_reference, load_config, parse_override_args
from abcrown_plugins.config.core import all_keys
from abcrown_plugins.config.schema import SECTIONS
from abcrown_plugins.errors import UserError


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_precedence_defaults_yaml_cli(tmp_path):
    p = write(tmp_path, "training:\n  epochs: 5\n  lr: 1e-2\ndata:\n  batch_size: 64\n")
    cfg = load_config(p, parse_override_args(["--training.epochs", "3"]))
    assert cfg.training.epochs == 3            # CLI beats YAML
    assert cfg.training.lr == pytest.approx(0.01)  # YAML '1e-2' (a string to PyYAML) is a float
    assert cfg.data.batch_size == 64           # YAML beats default
    assert cfg.training.optimizer == "adam"    # default
    assert isinstance(cfg.training.epochs, int)


def test_eps_fraction_and_lists(tmp_path):
    cfg = load_config(write(tmp_path, "training:\n  eps: 8/255\n  lr_milestones: [3, 5]\n"),
                      parse_override_args(["--verification.eps=2/255"]))
    assert cfg.training.eps == pytest.approx(8 / 255)
    assert cfg.verification.eps == pytest.approx(2 / 255)
    assert cfg.training.lr_milestones == (3, 5)


def test_unknown_key_names_closest(tmp_path):
    with pytest.raises(UserError) as e:
        load_config(write(tmp_path, "training:\n  epoch: 3\n"))
    msg = str(e.value)
    assert "training.epoch" in msg and "did you mean 'training.epochs'" in msg and "\n" not in msg


def test_unknown_section_and_cli_key():
    with pytest.raises(UserError, match="did you mean 'training'"):
        build_config({"trainig": {"epochs": 1}})
    with pytest.raises(UserError, match="unknown config key 'pruning.rat'.*did you mean 'pruning.rate'"):
        build_config({}, parse_override_args(["--pruning.rat", "0.3"]))


@pytest.mark.parametrize("key,value,expected", [
    ("training.epochs", "three", "expected int"),
    ("training.epochs", 2.5, "expected int"),
    ("training.epochs", True, "expected int"),
    ("training.lr", "fast", "expected float"),
    ("training.method", "magic", "one of standard, ibp"),
    ("general.progress", "yes", "expected bool"),
    ("training.lr_milestones", 3, "expected list of int"),
    ("pruning.rate", 1.5, "in [0, 1]"),
    ("training.eps", "-2/255", "non-negative"),
])
def test_wrong_type_names_key_kind_value(key, value, expected):
    section, k = key.split(".")
    with pytest.raises(UserError) as e:
        build_config({section: {k: value}})
    msg = str(e.value)
    assert key in msg and expected in msg and repr(value) in msg


def test_broken_yaml_names_file_and_line(tmp_path):
    p = write(tmp_path, "general:\n  seed: 1\ntraining:\n  epochs: [1, 2\n  lr: 0.1\n")
    with pytest.raises(UserError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "invalid YAML" in msg
    line = int(msg.split(str(p) + ":")[1].split(":")[0])
    assert 4 <= line <= 5


def test_missing_file_and_bad_top_level(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_yaml_is_never_evaluated(tmp_path):
    p = write(tmp_path, "general:\n  name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(p)


def test_reference_lists_every_key_with_help():
    ref = dump_reference()
    for s in SECTIONS:
        assert f"\n{s.name}:\n" in ref
        for o in s.options:
            assert f"  {o.key}:" in ref and o.help in ref
    assert len(all_keys()) == len(set(all_keys()))


def test_frozen_and_replace():
    cfg = default_config()
    with pytest.raises(Exception):
        cfg.training.epochs = 1
    cfg2 = cfg.replace(training={"epochs": 2})
    assert cfg2.training.epochs == 2 and cfg.training.epochs == 10


def test_hash_pinned_and_ignores_output():
    # regression pin: output folder names must not change silently across versions
    cfg = build_config({"training": {"epochs": 3}, "model": {"arch": "cnn_small"}})
    assert cfg.hash() == cfg.replace(output={"dir": "/elsewhere"}, general={"name": "x"}).hash()
    assert cfg.hash() != cfg.replace(training={"epochs": 4}).hash()
    assert default_config().hash() == "44136fa355"
    assert cfg.hash() == PINNED_HASH


PINNED_HASH = "11430a3081"


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "{}\n"])
def test_empty_config_file_is_an_error_naming_it(tmp_path, text):
    p = write(tmp_path, text, "empty.yaml")
    with pytest.raises(UserError) as e:
        load_config(p)
    assert str(p) in str(e.value) and "empty" in str(e.value) and "\n" not in str(e.value)


def test_given_keys_are_told_apart_from_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "verification:\n  eps: 2/255\n"), [("training.epochs", 3)])
    assert cfg.is_given("verification.eps") and cfg.is_given("training.epochs")
    assert not cfg.is_given("training.eps")
    assert cfg == default_config().replace(training={"epochs": 3})  # given-ness never changes equality or hash
    assert cfg.hash() == default_config().replace(training={"epochs": 3}).hash()
    assert cfg.replace(training={"eps": 0.1}).is_given("training.eps")
    assert not default_config().is_given("verification.eps")


@pytest.mark.parametrize("method,epochs,warmup,ramp,warns", [
    ("ibp", 3, 1, 5, True), ("crown-ibp", 5, 1, 5, True), ("fgsm", 2, 1, 5, True),
    ("ibp", 6, 1, 5, False), ("ibp", 10, 1, 5, False), ("standard", 1, 1, 5, False),
])
def test_warning_when_training_ends_before_the_eps_ramp(method, epochs, warmup, ramp, warns):
    from abcrown_plugins.config import config_warnings

    cfg = build_config({"training": {"method": method, "epochs": epochs, "eps_warmup_epochs": warmup,
                                     "eps_ramp_epochs": ramp}})
    messages = config_warnings(cfg)
    assert bool(messages) == warns
    if warns:
        assert len(messages) == 1 and "training.epochs" in messages[0] and "\n" not in messages[0]
