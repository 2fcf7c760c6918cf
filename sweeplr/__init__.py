"""sweeplr: Hydra-configured hyperparameter sweeps for a PyTorch logistic-regression model."""

from sweeplr.errors import SweeplrError

__all__ = ["SweeplrError", "__version__"]
__version__ = "0.1.0"
