"""imgframe: audit a fleet of Glance v1 / Huawei IMS images as one typed pandas DataFrame.

Examples
--------
>>> import imgframe
>>> df = imgframe.frame_from_headers([{"X-Image-Meta-Id": "a", "X-Image-Meta-Size": "1"}])
>>> df["size"].tolist()
[1]
"""

from imgframe.api import fetch_images, fetch_images_async, normalize_ids
from imgframe.auth import CallableToken, StaticToken, TokenSource
from imgframe.errors import (
    AuthError,
    ConfigError,
    FetchError,
    ImgframeError,
    ImgframeParseWarning,
    InvalidInputError,
    NoV1ApiError,
)
from imgframe.fetch import RetryPolicy, Timeout
from imgframe.io import to_csv, to_json, to_parquet
from imgframe.parse import ImageRecord, frame_from_headers, parse_headers
from imgframe.schema import FIELDS, columns, dtypes

__version__ = "0.1.0"

__all__ = [
    "FIELDS",
    "AuthError",
    "CallableToken",
    "ConfigError",
    "FetchError",
    "ImageRecord",
    "ImgframeError",
    "ImgframeParseWarning",
    "InvalidInputError",
    "NoV1ApiError",
    "RetryPolicy",
    "StaticToken",
    "Timeout",
    "TokenSource",
    "columns",
    "dtypes",
    "fetch_images",
    "fetch_images_async",
    "frame_from_headers",
    "normalize_ids",
    "parse_headers",
    "to_csv",
    "to_json",
    "to_parquet",
]
