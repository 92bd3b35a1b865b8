"""A test helper: a run's volume set to the simulated truth at the images' scale."""

import torch

from napari_semiamort.data.mrc import read_map


def at_truth(run, folder, n_fit=64) -> torch.Tensor:
    """The truth map of the simulated set in ``folder``, scaled to the images by least squares at the true poses
    of the first ``n_fit`` images; the run's volume is left set to the unscaled truth."""
    truth = torch.from_numpy(read_map(folder / "truth.mrc")[0])
    idx = torch.arange(n_fit)
    fr = run.frequencies(1.0)
    batch = run.source.batch(idx, fr)
    with torch.no_grad():
        run.volume.set_from_map(truth)
        pred, w = run.model.predict(run.data.reference_rotations[idx], None, batch.ctf, fr), run.model.inv_var(fr)
        scale = float((pred * batch.obs * w).sum() / (pred * pred * w).sum())
    return scale * truth
