"""Command-line interface: one module per sub-command, each with ``add_args`` and ``main``."""

SUMMARIES = {
    "reconstruct": "reconstruct a map from particles (.star, .cs, .mrcs) (or --resume a run)",
    "simulate": "simulate a particle stack with known poses from a map or an atomic model",
    "fsc": "FSC between two maps, and pose errors against known poses",
    "demo": "simulate the bundled molecule, reconstruct it and report the errors",
    "export": "write a run's results for ChimeraX (.cxc), cryoSPARC (.cs) or cryoDRGN (.pkl)",
    "inspect": "posterior maps of chosen particles and head specialisation (PNG)",
}
