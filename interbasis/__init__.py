"""interbasis: interaction bases, interaction graphs and loss-landscape views of networks."""

from interbasis import degeneracy
from interbasis.basis import Basis, load_bases, save_bases
from interbasis.build import activation_grams, build_bases, output_jacobian_gram
from interbasis.callbacks import Callback
from interbasis.distributed import DistributedError
from interbasis.errors import (
    DataError,
    FormatError,
    InterbasisError,
    NodeLayerError,
    NonFiniteError,
    NotPiecewiseLinearError,
    RankError,
    ShapeError,
    WriteError,
)
from interbasis.grams import GramAccumulator
from interbasis.graph_build import build_graph
from interbasis.section import Section
from interbasis.sources import Sources
from interbasis.stage_cache import CacheDir

__version__ = "0.1.0"

__all__ = [
    "Basis",
    "CacheDir",
    "Callback",
    "DataError",
    "DistributedError",
    "FormatError",
    "GramAccumulator",
    "InterbasisError",
    "NodeLayerError",
    "NonFiniteError",
    "NotPiecewiseLinearError",
    "RankError",
    "Section",
    "ShapeError",
    "Sources",
    "WriteError",
    "__version__",
    "activation_grams",
    "build_bases",
    "build_graph",
    "degeneracy",
    "load_bases",
    "output_jacobian_gram",
    "save_bases",
]
