"""Image ids as requested: read from what users pass, and checked before anything is sent.

:func:`normalize_ids` turns any collection of ids into distinct stripped strings (and
refuses what cannot be one, saying where); :func:`invalid_ids` finds, for all ids at
once, those that must not be sent as one URL path segment (docs/ARCHITECTURE.md, "The
wire"): such an id is never sent, its row says ``invalid image id``.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from imgframe.errors import InvalidInputError
from imgframe.outcome import INVALID_ID

__all__ = ["MAX_ID_LENGTH", "image_id_problem", "invalid_ids", "normalize_ids"]

# One path segment, nothing a server or proxy could reinterpret (docs/ARCHITECTURE.md):
# no / \ ? #, no ASCII or C1 control, no space or other Unicode separator, no "..", not
# ".". RE2 syntax: checked for all ids at once in pyarrow.
UNSAFE_ID = r"[/\\?#\x{00}-\x{20}\x{7f}-\x{9f}\p{Z}]|\.\.|^\.$"
MAX_ID_LENGTH = 255


def normalize_ids(ids: Iterable[Any]) -> list[str]:
    """Requested ids as distinct, stripped strings in first-seen order.

    Accepts any iterable (list, pandas Series or Index, numpy array, generator) of
    strings, bytes or ``uuid.UUID``. Refuses a bare string and missing values (None,
    NaN) with a message that says where they are, rather than dropping them.

    Examples
    --------
    >>> normalize_ids([" a ", "b", "a"])
    ['a', 'b']
    >>> normalize_ids("abc")
    Traceback (most recent call last):
    ...
    imgframe.errors.InvalidInputError: ids must be a collection of image ids, not one string; ...
    """
    if isinstance(ids, str | bytes):
        raise InvalidInputError(
            f"ids must be a collection of image ids, not one string; did you mean [{ids!r}]?"
        )
    if isinstance(ids, pd.DataFrame):
        raise InvalidInputError(
            "ids must be one column of ids: pass df['id'] or df.index, not a DataFrame"
        )
    if isinstance(ids, dict):
        ids = ids.keys()
    try:
        iterator = iter(ids)
    except TypeError:
        raise InvalidInputError(
            f"ids must be an iterable of image ids, not {type(ids).__name__}"
        ) from None
    seen: dict[str, None] = {}
    for position, value in enumerate(iterator):
        if isinstance(value, str):
            text = value
        elif isinstance(value, bytes):
            text = value.decode("utf-8", errors="replace")
        elif isinstance(value, uuid.UUID):
            text = str(value)
        elif value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            raise InvalidInputError(
                f"ids[{position}] is missing ({value!r}); every id must be a string"
            )
        else:
            raise InvalidInputError(
                f"ids[{position}] is a {type(value).__name__} ({value!r}), not a string image id"
            )
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInputError(
                    f"ids[{position}] is not valid Unicode text ({value!r}): it has lone "
                    "surrogates, as left by a wrong decoding"
                ) from None
        seen.setdefault(text.strip(), None)
    return list(seen)


def invalid_ids(image_ids: Sequence[str]) -> np.ndarray:
    """Mask of the ids that must not be sent as one URL path segment (vectorized).

    Examples
    --------
    >>> invalid_ids(["3c3d1d01-b48a-4639-8a88-08be3b9b5d78", "../admin", "a b", "", "."]).tolist()
    [False, True, True, True, True]
    """
    try:
        ids = pa.array(image_ids, type=pa.large_string())
    except (UnicodeEncodeError, pa.ArrowInvalid, pa.ArrowTypeError):
        # Lone surrogates cannot be sent as UTF-8: make those ids fail the check below.
        ids = pa.array([_utf8_or_nul(i) for i in image_ids], type=pa.large_string())
    length = pc.utf8_length(ids)
    bad = pc.or_(
        pc.match_substring_regex(ids, UNSAFE_ID),
        pc.or_(pc.equal(length, 0), pc.greater(length, MAX_ID_LENGTH)),
    )
    return bad.to_numpy(zero_copy_only=False)


def _utf8_or_nul(image_id: str) -> str:
    try:
        image_id.encode("utf-8")
    except UnicodeEncodeError:
        return "\x00"
    return image_id


def image_id_problem(image_id: str) -> str | None:
    """Why ``image_id`` must not be sent as one URL path segment, or None if it is safe.

    Examples
    --------
    >>> image_id_problem("3c3d1d01-b48a-4639-8a88-08be3b9b5d78") is None
    True
    >>> image_id_problem("../admin")
    'invalid image id'
    """
    return INVALID_ID if invalid_ids([image_id])[0] else None
