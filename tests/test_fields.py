"""Every field of the run's configuration is in the table of fields, reachable from `semiamort reconstruct` and
from the dock: a field added to ReconstructionConfig and forgotten in the table fails here."""

import argparse
import dataclasses
import re

import pytest

from napari_semiamort.cli.reconstruct import add_args, config_from_args
from napari_semiamort.run.config import ReconstructionConfig
from napari_semiamort.run.fields import FIELDS, GROUPS, field_named

CONFIG_FIELDS = [f.name for f in dataclasses.fields(ReconstructionConfig)]


def _example(f, tmp_path):
    """A valid value of field ``f`` that differs from its default (and from the dock's start)."""
    if f.path is not None:
        p = tmp_path / f.name
        p.mkdir(exist_ok=True) if f.path == "folder" else p.touch()
        return str(p.resolve())
    if f.kind is bool:
        return not f.default
    if f.kind is list:
        return [7, 9]
    if f.options() is not None:
        return next(o for o in f.options() if o != f.default)
    if f.default is None:  # optional numbers: something inside every range and rule (box: even, ≥ 8)
        return 8 if f.kind is int else 0.5
    return f.default + 2 if f.kind is int else f.default / 2


def test_every_config_field_is_in_the_table_once_with_a_group_a_label_and_help():
    names = [f.name for f in FIELDS]
    assert sorted(names) == sorted(CONFIG_FIELDS)
    assert len(set(names)) == len(names)
    for f in FIELDS:
        assert f.group in GROUPS and f.label and f.help, f.name
        assert f.flag is not None or f.name == "particles", f.name  # particles: the positional argument


@pytest.mark.parametrize("name", CONFIG_FIELDS)
def test_every_config_field_has_a_cli_flag_that_sets_it(name, tmp_path):
    f = field_named(name)
    parser = argparse.ArgumentParser()
    add_args(parser)
    value = _example(f, tmp_path)
    particles = str(tmp_path / "p.star")
    if f.flag is None:
        argv = [value]
    elif f.kind is bool:
        argv = [particles, f.flag]
    elif f.kind is list:
        argv = [particles, f.flag, *map(str, value)]
    else:
        argv = [particles, f.flag, str(value)]
    cfg = config_from_args(parser.parse_args(argv))
    assert getattr(cfg, name) == pytest.approx(value) if f.kind is float else getattr(cfg, name) == value
    others = {k: v for k, v in cfg.to_dict().items() if k not in (name, "particles")}
    assert others == {k: v for k, v in ReconstructionConfig().to_dict().items() if k not in (name, "particles")}


def test_the_flags_of_before_keep_their_spelling():
    parser = argparse.ArgumentParser()
    add_args(parser)
    flags = set(re.findall(r"(?m)(?:^ +|, )(--?[a-z][\w-]*)", parser.format_help()))  # the options' names
    old = {"--no-ctf", "--ctf-pkl", "--estimate-shifts", "--halves", "--watch", "--box", "--output-box", "--invert",
           "--mask-diameter", "--reference-map", "--datadir", "--pixel-size", "--pose-pkl", "--passthrough",
           "--heads", "--backbone", "--encoder-lr", "--volume-lr", "--volume-lr-autodecode", "--pose-lr",
           "--pose-steps", "--epochs", "--switch-epoch", "--batch-size", "--stage2-batch-size", "--loss",
           "--noise-model", "--max-freq", "--autoencode-min-freq", "--autoencode-max-freq", "--seed", "--device",
           "--threads", "--max-shift", "--shift-search", "-o", "--outdir", "--resume", "--force"}
    assert old <= flags


def test_every_config_field_has_a_dock_widget_that_sets_it(qtbot, tmp_path):
    from napari_semiamort._qt.form import ConfigForm

    form = ConfigForm()
    particles = str((tmp_path / "p.star").resolve())
    form.set_value("particles", particles)
    for name in CONFIG_FIELDS:
        f = field_named(name)
        widget = form[name]
        assert form.sections[f.group].isAncestorOf(widget.native), name
        value = _example(f, tmp_path)
        before = form.values()
        form.set_value(name, value)
        got = form.value(name)
        assert got == pytest.approx(value) if f.kind is float else got == value, name
        assert {k: v for k, v in form.values().items() if k != name} == \
            {k: v for k, v in before.items() if k != name}, name
        form.set_value(name, before[name])
    assert form.config().particles == particles
