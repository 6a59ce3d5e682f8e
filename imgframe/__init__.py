"""imgframe: audit a fleet of Glance v1 / Huawei IMS images as one typed pandas DataFrame.

Examples
--------
>>> import imgframe
>>> df = imgframe.frame_from_headers([{"X-Image-Meta-Id": "a", "X-Image-Meta-Size": "1"}])
>>> df["size"].tolist()
[1]
"""

import imgframe.accessor  # noqa: F401  (registers the df.img namespace)
from imgframe.allow import AllowList
from imgframe.api import fetch_images, fetch_images_async, normalize_ids
from imgframe.audits import (
    FINDING_COLUMNS,
    SEVERITIES,
    allowed_findings,
    audit,
    broken,
    checksum_duplicates,
    community_visible,
    format_mismatch,
    member_can_share,
    only_stopped_servers,
    owner_summary,
    profile_names,
    public_unprotected,
    register_rule,
    requirements_missing,
    resolved_findings,
    rule_names,
    security_properties,
    shared_outside,
    stale,
    unregister_rule,
    unused,
)
from imgframe.auth import (
    CallableToken,
    HuaweiAkSk,
    KeystoneToken,
    RequestSigner,
    StaticToken,
    TokenSource,
)
from imgframe.changes import CHANGES, diff
from imgframe.config import FetchOptions, RetryPolicy, Timeout
from imgframe.errors import (
    AllowListWarning,
    AuthError,
    CheckpointError,
    CheckpointWarning,
    ConfigError,
    FetchError,
    FleetWarning,
    ImgframeError,
    ImgframeParseWarning,
    ImgframeWarning,
    IncompleteListingWarning,
    InvalidInputError,
    NoV1ApiError,
)
from imgframe.fleet import Target, fetch_fleet, fetch_fleet_async
from imgframe.frame import frame_from_headers
from imgframe.history import History
from imgframe.io import read, read_csv, read_json, read_parquet, to_csv, to_json, to_parquet
from imgframe.listing import list_image_ids, list_image_ids_async
from imgframe.parse import ImageRecord, parse_headers
from imgframe.report_html import report
from imgframe.schema import FIELDS, columns, dtypes
from imgframe.usage import fetch_servers, fetch_servers_async, fetch_volumes, fetch_volumes_async
from imgframe.usage_frame import image_usage
from imgframe.widgets import picker  # ipywidgets is imported only when a picker is built

__version__ = "0.1.0"

__all__ = [
    "CHANGES",
    "FIELDS",
    "FINDING_COLUMNS",
    "SEVERITIES",
    "AllowList",
    "AllowListWarning",
    "AuthError",
    "CallableToken",
    "CheckpointError",
    "CheckpointWarning",
    "ConfigError",
    "FetchError",
    "FetchOptions",
    "FleetWarning",
    "History",
    "HuaweiAkSk",
    "ImageRecord",
    "ImgframeError",
    "ImgframeParseWarning",
    "ImgframeWarning",
    "IncompleteListingWarning",
    "InvalidInputError",
    "KeystoneToken",
    "NoV1ApiError",
    "RequestSigner",
    "RetryPolicy",
    "StaticToken",
    "Target",
    "Timeout",
    "TokenSource",
    "allowed_findings",
    "audit",
    "broken",
    "checksum_duplicates",
    "columns",
    "community_visible",
    "diff",
    "dtypes",
    "fetch_fleet",
    "fetch_fleet_async",
    "fetch_images",
    "fetch_images_async",
    "fetch_servers",
    "fetch_servers_async",
    "fetch_volumes",
    "fetch_volumes_async",
    "format_mismatch",
    "frame_from_headers",
    "image_usage",
    "list_image_ids",
    "list_image_ids_async",
    "member_can_share",
    "normalize_ids",
    "only_stopped_servers",
    "owner_summary",
    "parse_headers",
    "picker",
    "profile_names",
    "public_unprotected",
    "read",
    "read_csv",
    "read_json",
    "read_parquet",
    "register_rule",
    "report",
    "requirements_missing",
    "resolved_findings",
    "rule_names",
    "security_properties",
    "shared_outside",
    "stale",
    "to_csv",
    "to_json",
    "to_parquet",
    "unregister_rule",
    "unused",
]
