"""maas-client: the Python client of maas-gateway.

from maas_client import Client

with Client() as client:          # MAAS_BASE_URL, MAAS_API_KEY
    result = client.predict("efficientnet-lite0", "cat.jpg", top_k=3)
    print(result.predictions[0][0].label)
"""

from maas_client._core import RetryPolicy
from maas_client._inputs import FileInput, ImageInput
from maas_client._operations import NOT_GIVEN, ProgressCallback, Time
from maas_client._version import __version__
from maas_client.async_client import AsyncClient
from maas_client.client import Client
from maas_client.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    DeadlineExceededError,
    InternalServerError,
    InvalidInputError,
    MaasError,
    MethodNotAllowedError,
    ModelUnavailableError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UnsupportedMediaTypeError,
)
from maas_client.types import (
    APIKey,
    BillingExport,
    Box,
    Detection,
    Detections,
    Embeddings,
    Entities,
    Entity,
    FileObject,
    FineTuneEvent,
    FineTuneJob,
    FineTuneProgress,
    FineTuneUsage,
    InvoiceLine,
    KeyIdentity,
    Label,
    Model,
    Prediction,
    Tenant,
    Usage,
    UsageReport,
    UsageRow,
)

__all__ = [
    "NOT_GIVEN",
    "APIConnectionError",
    "APIKey",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "BillingExport",
    "Box",
    "Client",
    "ConflictError",
    "DeadlineExceededError",
    "Detection",
    "Detections",
    "Embeddings",
    "Entities",
    "Entity",
    "FileInput",
    "FileObject",
    "FineTuneEvent",
    "FineTuneJob",
    "FineTuneProgress",
    "FineTuneUsage",
    "ImageInput",
    "InternalServerError",
    "InvalidInputError",
    "InvoiceLine",
    "KeyIdentity",
    "Label",
    "MaasError",
    "MethodNotAllowedError",
    "Model",
    "ModelUnavailableError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "Prediction",
    "ProgressCallback",
    "RateLimitError",
    "RetryPolicy",
    "ServiceUnavailableError",
    "Tenant",
    "Time",
    "UnsupportedMediaTypeError",
    "Usage",
    "UsageReport",
    "UsageRow",
    "__version__",
]
