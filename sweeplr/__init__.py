"""sweeplr: Hydra-configured hyperparameter sweeps for a PyTorch logistic-regression model."""

from typing import Any

from sweeplr.errors import SweeplrError

__all__ = ["SweeplrError", "__version__", "load_sweep"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # sweeplr.load_sweep without making every `import sweeplr` load pandas.
    if name == "load_sweep":
        from sweeplr.results import load_sweep

        return load_sweep
    raise AttributeError(f"module 'sweeplr' has no attribute {name!r}")
