"""The engine and the CLI work where no Qt binding is installed: nothing outside ``_qt`` imports Qt."""

import subprocess
import sys


def test_the_package_cli_and_plugin_readers_import_with_qt_blocked(tmp_path):
    code = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'qtpy', 'napari', 'superqt', 'magicgui'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, _Block())
import napari_semiamort, napari_semiamort.run, napari_semiamort.data, napari_semiamort.cli.main
import napari_semiamort.plugin.readers, napari_semiamort.plugin.writers, napari_semiamort.plugin.sample
import napari_semiamort.plugin.layers
from napari_semiamort.cli.main import main
assert main(['--version']) == 0
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_core_dependencies_name_no_qt_binding():
    from importlib.metadata import requires

    core = [r for r in requires("napari-semiamort") if "extra ==" not in r]
    assert not any(q in r.lower() for r in core for q in ("pyqt", "pyside", "napari", "qtpy"))
