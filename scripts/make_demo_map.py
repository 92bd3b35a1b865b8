"""Build the bundled demo map from the 80S ribosome model 6ZU5 (run once; the output is committed).

  python scripts/make_demo_map.py ../shared/data/structures/6zu5_Plocustae_80S_ribosome.cif

Writes src/napari_semiamort/resources/ribosome_6zu5_64.mrc.gz: a 64³ density map (atoms as Gaussians of
σ = 1.2 Å weighted by atomic number, voxel-integrated) at the pixel size where the model's longest extent
fills 60% of the box, the same rule as `semiamort simulate`.
"""

import gzip
import shutil
import sys
import tempfile
from pathlib import Path

from napari_semiamort.data.mrc import write_mrc
from napari_semiamort.sim.simulate import truth_map

OUT = Path(__file__).resolve().parents[1] / "src" / "napari_semiamort" / "resources" / "ribosome_6zu5_64.mrc.gz"

vol, pixel = truth_map(sys.argv[1], 64, None, 0.6)
with tempfile.TemporaryDirectory() as tmp:
    plain = Path(tmp) / "map.mrc"
    write_mrc(plain, vol.numpy(), pixel)
    with open(plain, "rb") as src, gzip.open(OUT, "wb", compresslevel=9) as dst:
        shutil.copyfileobj(src, dst)
print(f"{OUT}: 64³ at {pixel} Å/px")
