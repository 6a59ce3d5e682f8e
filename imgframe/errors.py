"""The exceptions and warnings imgframe raises.

One root, a few precise children; each carries what a user needs to act on it
(never a token)::

    ImgframeError                      root of everything imgframe raises
    ├── ConfigError (ValueError)        an option is wrong: endpoint, concurrency, token, ...
    │   └── CheckpointError            the checkpoint folder is for another request, or unusable
    ├── InvalidInputError (ValueError) the ids argument cannot be read as image ids
    └── FetchError                     the run as a whole could not go on
        ├── NoV1ApiError               the cloud answered 300: Glance v1 is gone (Rocky+)
        └── AuthError                  no usable token could be had, or a signature was refused

    ImgframeWarning (UserWarning)      root of every warning imgframe emits
    ├── ImgframeParseWarning           header values that could not be parsed became NA
    ├── IncompleteListingWarning       a listing may miss images (killed ones)
    ├── CheckpointWarning              a checkpoint part could not be read; its ids are asked again
    ├── FleetWarning                   some targets of fetch_fleet failed; the others were returned
    └── AllowListWarning               an allow-list entry expired, or covered no finding

``warnings.simplefilter("error", imgframe.ImgframeWarning)`` turns every one of them into
an exception (a CI job that must not lose a value silently); ``"ignore"`` silences them.

A single image that fails (404, 403, a timeout after all retries, ...) is never an
exception: it is a row with ``http_status`` and ``error`` filled. Exceptions are for
what stops the whole run.
"""

from __future__ import annotations

__all__ = [
    "AllowListWarning",
    "AuthError",
    "CheckpointError",
    "CheckpointWarning",
    "ConfigError",
    "FetchError",
    "FleetWarning",
    "ImgframeError",
    "ImgframeParseWarning",
    "ImgframeWarning",
    "IncompleteListingWarning",
    "InvalidInputError",
    "NoV1ApiError",
]


class ImgframeError(Exception):
    """Root of every exception imgframe raises on purpose."""


class ConfigError(ImgframeError, ValueError):
    """An option given to imgframe is invalid (endpoint, concurrency, timeout, token...)."""


class CheckpointError(ConfigError):
    """A checkpoint cannot be used: made for another request (other ids, endpoint, api...),
    not a checkpoint folder, in use by another run, or a part could not be written.

    The message names what differs and how to go on (another folder, or delete it).
    """


class InvalidInputError(ImgframeError, ValueError):
    """The image ids given cannot be used (wrong type, a non-string element...)."""


class FetchError(ImgframeError):
    """The fetch run as a whole could not go on.

    ``url`` never contains a token: imgframe sends tokens in headers only. ``sentence``,
    when set, is the failure in the fixed ``error`` vocabulary of a row (e.g.
    ``HTTP 403 Forbidden``), for a caller that turns the error into a row.
    """

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int | None = None,
        sentence: str | None = None,
    ):
        super().__init__(message)
        self.url = url
        self.status = status
        self.sentence = sentence


class NoV1ApiError(FetchError):
    """The cloud answered ``300 Multiple Choices``: it has no Glance v1 API any more."""


class AuthError(FetchError):
    """No usable token could be had, or the server refused an access key signature."""


class ImgframeWarning(UserWarning):
    """Root of every warning imgframe emits (filter it to silence or escalate them all)."""


class ImgframeParseWarning(ImgframeWarning):
    """Some header values could not be parsed; they became NA (the rows are kept)."""


class CheckpointWarning(ImgframeWarning):
    """A checkpoint part could not be read and was skipped: its images are fetched again."""


class IncompleteListingWarning(ImgframeWarning):
    """A listing could not use what makes it complete (v1 ``changes-since``): it may miss
    images, killed ones above all."""


class FleetWarning(ImgframeWarning):
    """Some targets of :func:`imgframe.fetch_fleet` failed; the others were returned
    (their labels and errors are in the frame's ``attrs["failed_targets"]``)."""


class AllowListWarning(ImgframeWarning):
    """An allow-list entry expired, or covered no finding: it can go from the list."""
