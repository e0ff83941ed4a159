"""`--set` and preset values read as typed, rates --regularizer would drop are refused, and trainer
settings are checked against lightning.Trainer before any data is prepared: each a one-line ConfigError."""

from __future__ import annotations

import dataclasses
import re
import shlex

import pytest

from benchmark import runner
from benchmark.cli import main
from benchmark.config import apply_regularizer, load_preset, parse_value
from benchmark.runner import RunOptions
from benchmark.trainer_args import check_trainer_types
from tasks.nn.errors import ConfigError


def bench(tmp_path, *args) -> int:
    return main(["run", "--results-dir", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"), *args])


# -- YAML 1.1 surprises --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "reads"), [("no", "False"), ("Yes", "True"), ("on", "True"), ("OFF", "False"),
                                             ("1:30", "90"), ("010", "8"), ("0x1f", "31"), ("0b11", "3"),
                                             ("[1, off]", "False"), ("{on: 1}", "True"),
                                             ("2024-01-01", r"datetime\.date\(2024, 1, 1\)"), ("08", "'08'")])
def test_a_set_value_yaml_1_1_reads_otherwise_is_refused(text, reads):
    says = rf"^--set 'model\.backbone={re.escape(text)}': `.*` reads as {reads} in YAML 1\.1"
    with pytest.raises(ConfigError, match=says + r".*write true/false or the plain number, or quote it"):
        load_preset("ptb", "quick", [f"model.backbone={text}"])


@pytest.mark.parametrize(("text", "value"), [("true", True), ("False", False), ("null", None), ("~", None),
                                             ("3", 3), ("-2", -2), ("0", 0), ("1_000", 1000), ("0.5", 0.5),
                                             ("1e-3", 0.001), ("'no'", "no"), ("'010'", "010"), ("fused", "fused"),
                                             ("y", "y")])  # PyYAML reads y/n as the letters
def test_a_set_value_read_as_typed_is_kept(text, value):
    parsed = parse_value(text, f"model.x={text}")
    assert parsed == value and type(parsed) is type(value)


def test_a_preset_value_yaml_1_1_reads_otherwise_is_refused_naming_file_line_and_key(tmp_path):
    (tmp_path / "mine.yaml").write_text("model:\n  dropout: 0.5\n  backbone: no\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml:3: model\.backbone: `no` reads as False in YAML 1\.1"):
        load_preset("ptb", str(tmp_path / "mine.yaml"))
    # default_dropout's and paper's on/off are read back as on/off by the loader: they stay allowed.
    (tmp_path / "ok.yaml").write_text("default_dropout: on\nmodel: {dropout: 0.5, lr: 1, bias: true}\n"
                                      "paper:\n  on: {test_ppl: 82.7}\n  off: {test_ppl: 120.7}\n")
    ok = load_preset("ptb", str(tmp_path / "ok.yaml"))
    assert ok.default_dropout == "on" and set(ok.paper) == {"on", "off"} and ok.model["bias"] is True
    # ...but not a key inside a paper block.
    (tmp_path / "inner.yaml").write_text("model: {dropout: 0.5}\npaper:\n  on: {yes: 1}\n")
    with pytest.raises(ConfigError, match=r"inner\.yaml:3: paper\.on: `yes` reads as True"):
        load_preset("ptb", str(tmp_path / "inner.yaml"))


# -- rates --regularizer would overwrite ---------------------------------------------------------------------
def test_a_dropout_rate_set_for_another_regularizer_is_refused():
    preset = load_preset("ptb", "quick", ["model.dropout=0.3"])
    with pytest.raises(ConfigError, match=r"^--set model\.dropout: regularizer locked takes its rates from the "
                                          r"preset's `regularizers:` section .*use --regularizer zaremba$"):
        apply_regularizer(preset, "locked")
    zaremba = load_preset("ptb", "quick", ["model.dropout=0.3"])
    apply_regularizer(zaremba, "zaremba")  # the paper's dropout is model.dropout: the --set is what it trains
    assert zaremba.model["dropout"] == 0.3
    # A preset whose default is another regularizer refuses it without --regularizer too.
    with pytest.raises(ConfigError, match=r"--set model\.embed_dropout: regularizer awd \(this preset's "
                                          r"default_regularizer\)"):
        apply_regularizer(load_preset("ptb", "medium-awd", ["model.embed_dropout=0.3"]), "awd")
    # Other model keys are no rates: they stay settable under any regularizer.
    other = load_preset("ptb", "quick", ["model.lr=0.5"])
    apply_regularizer(other, "locked")
    assert other.model["lr"] == 0.5


def test_set_model_regularization_is_always_refused():
    with pytest.raises(ConfigError, match=r"model\.regularization is set by --regularizer NAME from the preset's "
                                          r"`regularizers:` section"):
        load_preset("ptb", "quick", ["model.regularization={locked: 0.5}"])


def test_the_cli_refuses_a_rate_its_regularizer_would_drop(tmp_path, capsys):
    assert bench(tmp_path, "--task", "ptb", "--preset", "quick", "--regularizer", "locked", "--set",
                 "model.dropout=0.3", "--dry-run") == 2
    assert "--set model.dropout: regularizer locked takes its rates" in capsys.readouterr().err
    assert bench(tmp_path, "--task", "ptb", "--preset", "quick", "--set", "model.dropout=0.3", "--dry-run") == 0


# -- trainer settings, before data ---------------------------------------------------------------------------
@pytest.mark.parametrize(("trainer", "says"), [
    ({"max_epochs": "abc"}, "trainer.max_epochs must be int or null, got 'abc'"),
    ({"max_epochs": True}, "trainer.max_epochs must be int or null, got True"),  # a bool is no count
    ({"gradient_clip_val": "x"}, "trainer.gradient_clip_val must be int or float or null, got 'x'"),
    ({"max_steps": 2.5}, "trainer.max_steps must be int, got 2.5"),
    ({"precision": "bf17"}, "trainer.precision must be 64 or 32"),
    ({"devices": "0,1x"}, None),  # a str is a devices value; Lightning parses it
    ({"max_epoch": 3}, "trainer.max_epoch is not a lightning.Trainer argument; did you mean max_epochs"),
    ({"logger": False}, "trainer.logger is set by --logger"),
])
def test_check_trainer_types(trainer, says):
    if says is None:
        check_trainer_types(trainer, "here")
        return
    with pytest.raises(ConfigError, match="^here: " + says.replace("(", r"\(").replace(".", r"\.")):
        check_trainer_types(trainer, "here")


def test_trainer_values_lightning_takes_pass():
    check_trainer_types({"gradient_clip_val": 5, "gradient_clip_algorithm": "norm", "limit_val_batches": 1,
                         "limit_train_batches": 0.5, "precision": "bf16-mixed", "devices": [0, 1],
                         "max_time": "00:01:00:00", "deterministic": "warn", "fast_dev_run": True,
                         "max_steps": 2, "enable_progress_bar": False, "accelerator": "cpu", "num_nodes": 1,
                         "strategy": "auto", "val_check_interval": 0.5, "max_epochs": None}, "here")


def test_a_bad_trainer_setting_fails_before_the_data_is_prepared(tmp_path, monkeypatch):
    def no_data(*_):
        raise AssertionError("make_datamodule ran before the trainer settings were checked")

    monkeypatch.setattr(runner, "make_datamodule", no_data)
    preset = load_preset("ptb", "quick", ["trainer.gradient_clip_val=x"])
    opts = RunOptions(dropout="on", data_root=tmp_path / "data", results_dir=tmp_path / "results",
                      runs_dir=tmp_path / "runs")
    with pytest.raises(ConfigError, match=r"quick\.yaml or the command line: trainer\.gradient_clip_val must be"):
        runner.run(preset, opts)
    # The command line's settings are checked over the preset's, with them.
    opts = dataclasses.replace(opts, trainer={"max_epochs": "abc", "max_steps": None})
    with pytest.raises(ConfigError, match=r"trainer\.max_epochs must be int or null, got 'abc'"):
        runner.plan(load_preset("ptb", "quick"), opts)


def test_the_cli_checks_trainer_settings_before_any_run(tmp_path, capsys):
    # No data under --data-root: the trainer setting is what it names, not a download.
    assert bench(tmp_path, "--task", "ptb", "--preset", "quick", "--data-root", str(tmp_path / "empty"),
                 "--set", "trainer.max_epochs=abc") == 2
    err = capsys.readouterr().err
    assert "trainer.max_epochs must be int or null, got 'abc'" in err and "download" not in err
    assert bench(tmp_path, "--task", "ptb", "--preset", "quick", "--set", "trainer.max_epoch=3", "--dry-run") == 2
    assert "did you mean max_epochs" in capsys.readouterr().err


def test_the_quote_a_set_refusal_suggests_survives_the_shell():
    with pytest.raises(ConfigError) as err:
        load_preset("ptb", "quick", ["model.backbone=no"])
    assert """--set "model.backbone='no'\"""" in str(err.value)
    assert shlex.split("""--set "model.backbone='no'\"""")[1] == "model.backbone='no'"
    assert parse_value("'no'") == "no"


def test_a_dropout_rate_set_for_an_off_run_of_a_regularizer_preset_is_not_refused(tmp_path, capsys):
    """`--dropout off` trains no regularizer, so nothing of a --set rate is overwritten by one."""
    assert bench(tmp_path, "--task", "ptb", "--preset", "medium-variational", "--dropout", "off",
                 "--set", "model.dropout=0.3", "--dry-run") == 0
    assert bench(tmp_path, "--task", "ptb", "--preset", "medium-variational", "--dropout", "on,off",
                 "--set", "model.dropout=0.3", "--dry-run") == 2


def test_a_nested_surprise_is_quoted_in_place_not_as_the_whole_value():
    with pytest.raises(ConfigError) as err:
        load_preset("ptb", "quick", ["model.x=[1, off]"])
    assert "quote it ('off')" in str(err.value) and '--set "model.x=' not in str(err.value)
