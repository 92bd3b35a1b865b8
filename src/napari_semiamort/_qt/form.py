"""The dock's form, made from the run's table of fields (:mod:`napari_semiamort.run.fields`) with magicgui: one
widget per field, in a Data, a Training and an Advanced section, and the configuration they describe."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import CheckBox, ComboBox, FileEdit, FloatSpinBox, LineEdit, SpinBox, Widget
from qtpy.QtWidgets import QFormLayout, QHBoxLayout, QWidget

from ..run.config import ReconstructionConfig
from ..run.fields import FIELDS, GROUPS, Field, field_named, fields_in, parse_watch, to_value
from .runner import interface_threads

__all__ = ["ConfigForm", "make_widget"]


def _spin(f: Field, value: Any) -> Widget:
    """A spin box; an optional field's minimum shows its ``special`` text and stands for None.

    Integers with a special text use a float spin box without decimals: magicgui's integer spin box
    (superqt's ``QLargeIntSpinBox``) shows no special value text."""
    lo = f.minimum if f.minimum is not None else 0
    hi = f.maximum if f.maximum is not None else 10**9
    start = lo if value is None else value
    if f.kind is int and f.special is None:
        return SpinBox(min=int(lo), max=int(hi), step=int(f.step or 1), value=int(start))
    w = FloatSpinBox(min=lo, max=hi, step=f.step or 1)
    w.native.setDecimals(0 if f.kind is int else f.decimals if f.decimals is not None else 3)
    w.value = start
    if f.special:
        w.native.setSpecialValueText(f.special)
    return w


def make_widget(f: Field) -> Widget:
    """The magicgui widget of one field, at the dock's starting value, its help as the tooltip."""
    value = f.start
    if f.path is not None:
        w = FileEdit(mode="d" if f.path == "folder" else "r", filter=f.file_filter, nullable=True, value=value)
        w.line_edit.native.setPlaceholderText(f.help if f.special is None else f"{f.special} · {f.help}")
    elif f.kind is bool:
        w = CheckBox(text=f.label, value=value)
    elif f.choices is not None:
        w = ComboBox(choices=f.options(), value=value)
    elif f.kind is list:
        w = LineEdit(value=" ".join(str(i) for i in value))
    elif f.kind in (int, float):
        w = _spin(f, value)
    else:
        w = LineEdit(value=value or "")
    w.name, w.label, w.tooltip = f.name, f.label, f.help
    return w


def _section(rows: list[tuple[Field, list[Widget]]]) -> QWidget:
    """A form of labelled rows (a check box carries its own text), aligned by Qt whatever the style's font."""
    section = QWidget()
    form = QFormLayout(section)
    form.setContentsMargins(0, 0, 0, 0)
    for f, widgets in rows:
        if len(widgets) == 1:
            field = widgets[0].native
        else:
            field = QHBoxLayout()
            for w in widgets:
                field.addWidget(w.native)
        form.addRow("" if f.kind is bool else f.label, field)
    return section


class ConfigForm:
    """The run's settings as widgets: ``form[name]`` is a field's magicgui widget, ``form.sections[group]``
    the Qt widget of a group's form (Data, Training, Advanced), and :meth:`config` the configuration they
    describe.

    ``beside`` puts extra widgets on a field's row (the dock's *Watch shown particle* button)."""

    def __init__(self, beside: dict[str, list[Widget]] | None = None):
        beside = beside or {}
        self.widgets: dict[str, Widget] = {f.name: make_widget(f) for f in FIELDS}
        self.sections: dict[str, QWidget] = {
            group: _section([(f, [self.widgets[f.name], *beside.get(f.name, [])]) for f in fields_in(group)])
            for group in GROUPS}
        for f in FIELDS:
            if f.enabled_by is not None:
                self._link(f.name, f.enabled_by, f.enabled_value)

    def _link(self, name: str, switch: str, wanted: str | None = None) -> None:
        target, source = self.widgets[name], self.widgets[switch]
        def on(value) -> bool:  # a check box, or a choice whose "no" turns the target off, or the wanted choice
            return value == wanted if wanted is not None else value not in (False, None, "no")

        target.enabled = on(source.value)
        source.changed.connect(lambda value: setattr(target, "enabled", on(value)))

    def __getitem__(self, name: str) -> Widget:
        return self.widgets[name]

    def value(self, name: str) -> Any:
        """A field's value as the config takes it."""
        f, w = field_named(name), self.widgets[name]
        if f.kind is list:
            try:
                return parse_watch(w.value)
            except ValueError:
                return []
        if f.path is not None:
            return to_value(f, w.value)
        value = w.value
        if f.kind in (int, float):
            if f.optional and value == w.min:
                return None
            return int(round(value)) if f.kind is int else float(value)
        return value

    def set_value(self, name: str, value: Any) -> None:
        """Show ``value`` (as the config holds it) in a field's widget."""
        f, w = field_named(name), self.widgets[name]
        if f.kind is list:
            w.value = " ".join(str(int(i)) for i in value)
        elif f.path is not None:
            w.value = value
        elif f.kind in (int, float) and value is None:
            w.value = w.min
        else:
            w.value = value

    def set_values(self, **values: Any) -> None:
        for name, value in values.items():
            self.set_value(name, value)

    def values(self) -> dict[str, Any]:
        return {f.name: self.value(f.name) for f in FIELDS}

    def config(self) -> ReconstructionConfig:
        """The configuration the widgets describe (validated). On the CPU, unless set, the run leaves one core
        to the interface."""
        values = self.values()
        if not values["particles"]:
            raise ValueError("choose a particle file (.star, .cs or .mrcs) first")
        cfg = ReconstructionConfig(**values)
        if cfg.threads is None and cfg.device in ("auto", "cpu"):
            cfg.threads = interface_threads()
        cfg.validate()
        return cfg
