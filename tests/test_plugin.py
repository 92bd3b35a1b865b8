"""The napari plugin through napari's own plugin API: manifest, readers, writer, sample data."""

import mrcfile
import numpy as np
import pytest

from conftest import DATA, SHARED

PLUGIN = "napari-semiamort"
pytestmark = pytest.mark.usefixtures("no_worker_outlives_its_test")


def test_the_manifest_is_valid_and_lists_readers_writer_sample_and_the_widget():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest(PLUGIN)  # loading validates it
    c = manifest.contributions
    assert {r.command for r in c.readers} == {f"{PLUGIN}.get_reader"}
    assert {"*.star", "*.cs", "*.mrcs", "*.mrc"} <= set(c.readers[0].filename_patterns)
    assert c.writers[0].layer_types == ["image"] and ".mrc" in c.writers[0].filename_extensions
    assert [s.key for s in c.sample_data] == ["demo-ribosome"]
    assert [w.display_name for w in c.widgets] == ["Ab-initio reconstruction"]


def test_the_widget_is_in_naparis_plugins_menu_and_opens_from_it(make_napari_viewer):
    from napari_semiamort._qt.widget import ReconstructionWidget

    viewer = make_napari_viewer()
    (action,) = [a for a in viewer.window.plugins_menu.actions() if a.text().startswith("Ab-initio reconstruction")]
    action.trigger()
    found = [w for w in viewer.window.dock_widgets.values() if isinstance(w, ReconstructionWidget)]
    assert len(found) == 1


def test_a_map_opens_as_a_volume_scaled_by_its_voxel_size(make_napari_viewer, tmp_path):
    from napari_semiamort.data.mrc import write_mrc

    rng = np.random.default_rng(0)
    write_mrc(tmp_path / "m.mrc", rng.normal(size=(16, 16, 16)).astype(np.float32), 3.2)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "m.mrc"), plugin=PLUGIN)
    assert layer.data.shape == (16, 16, 16) and tuple(layer.scale) == pytest.approx((3.2, 3.2, 3.2))


@pytest.mark.parametrize("name", ["empiar_10076_7.star", "empiar_10076_7.cs", "empiar_10076_7.mrc"])
def test_particles_open_lazily_as_a_2d_stack_from_star_cs_and_stack(make_napari_viewer, name):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(DATA / name), plugin=PLUGIN)
    assert layer.data.shape == (7, 320, 320) and layer.metadata["semiamort_kind"] == "particles"
    with mrcfile.open(DATA / "empiar_10076_7.mrc") as m:
        np.testing.assert_array_equal(np.asarray(layer.data[3]), m.data[3])
    if name != "empiar_10076_7.mrc":  # the metadata's pixel size; the bare stack's header says 0 (unset)
        assert layer.scale[-1] == pytest.approx(1.31, abs=1e-3)


def test_the_writer_saves_an_image_layer_as_mrc_with_its_voxel_size(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    vol = np.random.default_rng(1).normal(size=(12, 12, 12)).astype(np.float32)
    viewer.add_image(vol, name="v", scale=(4.5, 4.5, 4.5))
    viewer.layers.save(str(tmp_path / "out.mrc"), selected=False, plugin=PLUGIN)
    with mrcfile.open(tmp_path / "out.mrc") as m:
        assert float(m.voxel_size.x) == pytest.approx(4.5)
        np.testing.assert_allclose(m.data, vol)


def test_sample_data_gives_the_demo_particles_and_their_ground_truth(make_napari_viewer, tmp_path, monkeypatch):
    from napari_semiamort._qt.runner import default_run_dir
    from napari_semiamort.plugin.sample import demo_root

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "demo-ribosome")
    particles, truth = viewer.layers["demo particles"], viewer.layers["demo truth"]
    assert particles.data.shape == (1000, 64, 64) and truth.data.shape == (64, 64, 64)
    assert particles.scale[-1] == pytest.approx(truth.scale[-1]) and truth.scale[-1] > 1
    # simulated once, into the cache (no partial folder left), and read from there the next time
    (folder,) = demo_root().iterdir()
    stamp = (folder / "particles.mrcs").stat().st_mtime_ns
    viewer.open_sample(PLUGIN, "demo-ribosome")
    assert list(demo_root().iterdir()) == [folder] and (folder / "particles.mrcs").stat().st_mtime_ns == stamp
    assert viewer.layers["demo particles [1]"].metadata["source"] == particles.metadata["source"]
    # a run of the demo goes to ~/semiamort-runs, not into the cache; other particles' runs beside them
    runs = tmp_path / "home" / "semiamort-runs"
    assert default_run_dir(particles.metadata["source"], "s") == runs / "semiamort-run-s"
    assert default_run_dir(tmp_path / "p.star", "s") == tmp_path / "semiamort-run-s"


def test_a_map_reader_refuses_a_broken_file_with_its_name(make_napari_viewer, tmp_path):
    (tmp_path / "bad.mrc").write_bytes(b"garbage" * 300)
    from napari_semiamort.plugin.readers import get_reader

    with pytest.raises(ValueError, match=r"bad\.mrc"):
        get_reader(str(tmp_path / "bad.mrc"))(str(tmp_path / "bad.mrc"))
    assert SHARED.exists()
