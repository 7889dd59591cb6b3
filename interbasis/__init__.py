"""interbasis: interaction bases, interaction graphs and loss-landscape views of networks."""

from interbasis.callbacks import Callback
from interbasis.errors import (
    DataError,
    FormatError,
    InterbasisError,
    NodeLayerError,
    NonFiniteError,
    RankError,
    ShapeError,
)

__version__ = "0.1.0"

__all__ = [
    "Callback",
    "DataError",
    "FormatError",
    "InterbasisError",
    "NodeLayerError",
    "NonFiniteError",
    "RankError",
    "ShapeError",
    "__version__",
]
