"""Did a fetch read what was asked? One definition, used by the checkpoint, the CLI's
exit status and its summary.

A row has a **definitive** answer when asking again cannot change it: the image was
read (``http_status`` 200 and no ``error``; a 200 whose answer lied carries an error and
is not read), the server said it does not exist (404), or the id was
never sent because it is not a valid image id. Everything else (403, 5xx after all
retries, timeouts, connection failures, rows never sent because the run stopped) is
**unread**: a resumed run asks those ids again, and a run with any of them is
incomplete.

A run **failed as a whole** when ids were sent and none got a definitive answer and no
row got an HTTP answer other than 401: nothing but refused connections, DNS or TLS
failures, timeouts, a rejected token or rows never sent. Invalid ids do not count
either way: imgframe answered them itself, not the server. Then the table is worthless (writing
it would only replace a good snapshot with rows of errors) and the cause is one line.

Examples
--------
>>> import pandas as pd
>>> df = pd.DataFrame({"http_status": pd.array([200, 404, None, 503], dtype="Int64"),
...                    "error": [None, "HTTP 404 Not Found", "invalid image id",
...                              "HTTP 503 Service Unavailable (gave up after 4 attempts)"]})
>>> definitive_mask(df).tolist()
[True, True, True, False]
>>> out = run_outcome(df)
>>> out.complete, out.unread, out.failed_as_a_whole
(False, 1, False)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["INVALID_ID", "Outcome", "definitive_mask", "run_outcome"]

#: The ``error`` of an id that was never sent because it is not one URL path segment.
INVALID_ID = "invalid image id"
#: HTTP statuses whose answer is final for an image.
DEFINITIVE_STATUSES = (200, 404)


def definitive_mask(df: pd.DataFrame) -> np.ndarray:
    """Boolean mask of the rows whose answer is final (200, 404, invalid id).

    Examples
    --------
    >>> import pandas as pd
    >>> definitive_mask(pd.DataFrame({"http_status": pd.array([200, 500, 200], dtype="Int64"),
    ...                               "error": [None, "HTTP 500", "bad response: ..."]})).tolist()
    [True, False, False]
    """
    status = df["http_status"]
    error = df["error"].astype("string")
    answered = status.isin(DEFINITIVE_STATUSES).fillna(False).to_numpy(dtype=bool)
    # A 200 with an error is an answer that lied (another image's id, no metadata, broken
    # HTTP): nothing was read, so it is asked again like any other failure.
    clean = error.isna().to_numpy(dtype=bool) | (status != 200).fillna(True).to_numpy(dtype=bool)
    invalid = (error == INVALID_ID).fillna(False).to_numpy(dtype=bool)
    return (answered & clean) | invalid


@dataclass(frozen=True)
class Outcome:
    """How complete a fetched frame is (see the module docstring for the terms)."""

    rows: int
    unread: int
    #: ``error`` -> count, for the unread rows, most frequent first.
    reasons: dict[str, int] = field(default_factory=dict)
    #: No row got an answer worth keeping (see the module docstring).
    failed_as_a_whole: bool = False

    @property
    def complete(self) -> bool:
        """Every requested id got a definitive answer."""
        return self.unread == 0

    def summary(self) -> str:
        """One line: complete, or how many ids could not be read and the main reasons.

        Examples
        --------
        >>> Outcome(rows=10, unread=3, reasons={"HTTP 403 Forbidden": 2, "timed out": 1}
        ...         ).summary()
        'incomplete: 3 of 10 ids could not be read (2 HTTP 403 Forbidden; 1 timed out)'
        """
        if self.complete:
            return f"complete: all {self.rows:,} ids got a definitive answer"
        shown = "; ".join(f"{count:,} {reason}" for reason, count in list(self.reasons.items())[:3])
        more = "; ..." if len(self.reasons) > 3 else ""
        return f"incomplete: {self.unread:,} of {self.rows:,} ids could not be read ({shown}{more})"


def run_outcome(df: pd.DataFrame) -> Outcome:
    """Classify a fetched frame: how many rows are unread, why, and whether the run
    failed as a whole.

    Examples
    --------
    >>> import pandas as pd
    >>> rejected = pd.DataFrame({"http_status": pd.array([401, None], dtype="Int64"),
    ...                          "error": ["HTTP 401 Unauthorized", "not requested: ..."]})
    >>> run_outcome(rejected).failed_as_a_whole
    True
    """
    final = definitive_mask(df)
    unread = ~final
    errors = df.loc[unread, "error"].astype("string").fillna("no error recorded")
    reasons = {str(k): int(v) for k, v in errors.value_counts().items()}
    status = df["http_status"]
    other_answer = (status.notna() & status.ne(401)).fillna(False).to_numpy(dtype=bool)
    sent = df["error"].astype("string").ne(INVALID_ID).fillna(True).to_numpy(dtype=bool)
    failed = bool(sent.any()) and not (final & sent).any() and not other_answer.any()
    return Outcome(
        rows=len(df), unread=int(unread.sum()), reasons=reasons, failed_as_a_whole=failed
    )
