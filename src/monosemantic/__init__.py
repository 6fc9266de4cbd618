"""monosemantic: sparse dictionary learning on transformer activations."""

__version__ = "0.1.0"

__all__ = ["open_run"]


def __getattr__(name: str) -> object:
    # lazy: `import monosemantic` (and the CLI) stays free of torch until the notebook API is used
    if name == "open_run":
        from monosemantic.notebook import open_run

        return open_run
    raise AttributeError(f"module 'monosemantic' has no attribute {name!r}")
