"""The napari plugin's Qt widgets. Only this folder imports Qt; the engine and CLI never do."""
