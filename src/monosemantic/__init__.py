"""monosemantic: sparse dictionary learning on transformer activations."""

__version__ = "0.1.0"
