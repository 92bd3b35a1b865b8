"""napari contributions that need no Qt: readers, the MRC writer, sample data (``napari.yaml``)."""
