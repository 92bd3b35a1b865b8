"""The command line's help: the sub-commands listed once, and every option of `semiamort reconstruct` with its
unit or its choices, the restarts among them."""

import re

import pytest

from napari_semiamort.cli.main import _COMMANDS, main
from napari_semiamort.cli.reconstruct import UNITS
from napari_semiamort.run.fields import FIELDS


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def _option_lines(text: str) -> dict[str, str]:
    """Each option's entry in a help text: ``--flag`` → its metavar and help, wrapped lines joined."""
    entries, flag = {}, None
    for line in text.splitlines():
        m = re.match(r"  (-\w, )?(--[\w-]+)(.*)", line)
        if m:
            flag = m.group(2)
            entries[flag] = m.group(3).strip()
        elif flag and line.startswith("      "):
            entries[flag] += " " + line.strip()
        else:
            flag = None
    return entries


def test_semiamort_help_lists_each_subcommand_once(capsys):
    out = _help(capsys)
    for cmd in _COMMANDS:
        rows = [line for line in out.splitlines() if re.match(rf"\s+{cmd}\b", line)]
        assert len(rows) == 1, (cmd, rows)
    assert out.startswith("usage: semiamort [-h] [--version] COMMAND ...")


def test_reconstruct_help_shows_the_restart_options(capsys):
    options = _option_lines(_help(capsys, "reconstruct"))
    for flag in ("--restarts", "--restart-epochs", "--max-restarts", "--restart-margin"):
        assert flag in options, flag
    assert options["--restart-epochs"].startswith("EPOCHS ")
    assert "(default: 3)" in options["--restarts"]


def test_reconstruct_help_names_units_and_choices(capsys):
    options = _option_lines(_help(capsys, "reconstruct"))
    assert options["--mask-diameter"].startswith("Å ")
    assert options["--pixel-size"].startswith("Å ")
    assert options["--max-freq"].startswith("FRACTION_OF_NYQUIST ") and "fraction of Nyquist" in options["--max-freq"]
    assert options["--box"].startswith("PX ")
    assert options["--shift-search"].startswith("PX ") and "(default: 3 px)" in options["--shift-search"]
    assert options["--epochs"].startswith("EPOCHS ")
    assert options["--loss"].startswith("{gaussian,l1}")
    assert options["--noise-model"].startswith("{shell,shell-residual,white}")


def test_every_reconstruct_option_that_takes_a_value_names_its_unit_or_choices(capsys):
    """A field added to the table needs a unit in cli/reconstruct.py's UNITS (or choices) to pass."""
    options = _option_lines(_help(capsys, "reconstruct"))
    for f in FIELDS:
        if f.flag is None or f.kind is bool:
            continue
        value = options[f.flag].split()[0]
        if isinstance(f.choices, tuple):
            assert value == "{" + ",".join(f.choices) + "}", f.flag
        else:
            assert f.name in UNITS and value.strip("[") == UNITS[f.name], f.flag
