"""FetchOptions (imgframe.config): made once per call, checked in one place, the same
for the CLI and the functions."""

from __future__ import annotations

import dataclasses

import pytest

from imgframe import ConfigError, FetchOptions, RetryPolicy, Timeout, fetch_images
from imgframe.cli import build_parser, fetch_options
from imgframe.config import as_retry, as_timeout


def _cli_options(*flags: str) -> FetchOptions:
    args = build_parser().parse_args(["fetch", "--endpoint", "http://127.0.0.1:9", *flags, "x"])
    return fetch_options(args)


@pytest.mark.parametrize("seconds", ["5", "0.5", "30", "60"])
def test_cli_timeout_is_the_functions_timeout(seconds) -> None:
    from_cli = _cli_options("--timeout", seconds)
    from_function = FetchOptions.build(timeout=float(seconds))
    assert from_cli.timeout == from_function.timeout == Timeout(total=float(seconds))
    assert from_cli.timeout.connect == min(float(seconds), 10.0)


def test_cli_options_equal_the_functions_for_the_same_values() -> None:
    from_cli = _cli_options(
        "--timeout", "7", "--retries", "2", "--concurrency", "9", "--max-rps", "50",
        "--api", "v2", "--insecure",
    )  # fmt: skip
    expected = FetchOptions.build(
        timeout=7, retries=2, concurrency=9, max_rps=50, api="v2", verify=False
    )
    assert dataclasses.replace(from_cli, progress=None) == expected


def test_a_timeout_in_seconds_never_connects_longer_than_it_lasts() -> None:
    assert as_timeout(5) == Timeout(total=5) == Timeout(total=5, connect=5)
    assert Timeout(total=60).connect == 10.0 and Timeout().connect == 10.0
    assert Timeout(total=60, connect=30).connect == 30


def test_retries_as_a_count_is_attempts_minus_one() -> None:
    assert as_retry(0) == RetryPolicy(attempts=1)
    assert as_retry(RetryPolicy(attempts=9)).attempts == 9


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"api": "v3"}, "api must be 'v1', 'v2' or 'auto', got 'v3'"),
        ({"concurrency": 0}, "concurrency must be an integer from 1 to 10000, got 0"),
        ({"concurrency": True}, "concurrency must be an integer"),
        ({"max_rps": 0}, "max_rps must be a positive number or None, got 0"),
        ({"max_rps": float("inf")}, "max_rps must be a positive number"),
        ({"timeout": -1}, "timeouts must be positive seconds"),
        ({"timeout": "5"}, "timeout must be seconds or a Timeout, got '5'"),
        ({"retries": -1}, "retries must be a count >= 0 or a RetryPolicy, got -1"),
        ({"verify": 1}, "verify must be True, False or a CA bundle path"),
        ({"include_deleted": "yes"}, "include_deleted must be True or False, got 'yes'"),
        ({"verify_with_head": 1}, "verify_with_head must be True or False, got 1"),
        ({"page_size": 0}, "page_size must be an integer >= 1, got 0"),
        ({"max_pages": False}, "max_pages must be an integer >= 1, got False"),
    ],
)
def test_a_wrong_option_is_one_line_config_error(options, message) -> None:
    with pytest.raises(ConfigError) as caught:
        FetchOptions.build(**options)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_options_are_frozen_and_checked_again_when_replaced() -> None:
    options = FetchOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.api = "v2"  # type: ignore[misc]
    with pytest.raises(ConfigError, match="api must be"):
        dataclasses.replace(options, api="v9")  # type: ignore[arg-type]


def test_the_public_function_refuses_a_wrong_option_before_sending() -> None:
    # Port 9 (discard) is never contacted: the options are refused first.
    with pytest.raises(ConfigError, match="concurrency must be"):
        fetch_images(["x"], endpoint="http://127.0.0.1:9", token="t", concurrency=0)
