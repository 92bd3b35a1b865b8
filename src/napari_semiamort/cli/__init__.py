"""Command-line interface: one module per sub-command, each with ``add_args`` and ``main``."""

SUMMARIES = {
    "reconstruct": "reconstruct a map from a particle STAR file (or --resume a run)",
    "simulate": "simulate a particle stack with known poses from a map or an atomic model",
    "fsc": "FSC between two maps, and pose errors against known poses",
    "demo": "simulate the bundled molecule, reconstruct it and report the errors",
}
