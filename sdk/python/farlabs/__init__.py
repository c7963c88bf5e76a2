"""The Far Mesh client: stream tokens with their running cost, resume dropped connections, never bill twice.

from farlabs import FarMesh
mesh = FarMesh(api_key="...")
for token in mesh.chat("Explain quantum computing"):
    print(token, end="")
"""

from farlabs.catalog import Balance, MeshStatus, Model
from farlabs.client import AsyncFarMesh, FarMesh
from farlabs.errors import (
    APIConnectionError,
    APIError,
    Conflict,
    FarMeshError,
    Forbidden,
    GenerationFailed,
    InsufficientBalance,
    InvalidRequest,
    MaxPriceExceeded,
    ModelUnavailable,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RouteUnsatisfiable,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)
from farlabs.options import RetryPolicy
from farlabs.progress import Usage
from farlabs.provider import MaxPrice, ProviderPreferences, RouteSort
from farlabs.stream import AsyncTokenStream, TokenStream

__version__ = "0.1.0"

__all__ = [
    "APIConnectionError",
    "APIError",
    "AsyncFarMesh",
    "AsyncTokenStream",
    "Balance",
    "Conflict",
    "FarMesh",
    "FarMeshError",
    "Forbidden",
    "GenerationFailed",
    "InsufficientBalance",
    "InvalidRequest",
    "MaxPrice",
    "MaxPriceExceeded",
    "MeshStatus",
    "Model",
    "ModelUnavailable",
    "NotFound",
    "PayloadTooLarge",
    "ProviderPreferences",
    "RateLimited",
    "RetryPolicy",
    "RouteSort",
    "RouteUnsatisfiable",
    "ServiceUnavailable",
    "TokenStream",
    "Unauthorized",
    "UnsupportedMediaType",
    "Usage",
]
