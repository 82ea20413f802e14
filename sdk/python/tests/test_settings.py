"""A setting the subscription cannot follow is refused when the
`Subscription` is made, naming the setting and the value, rather than
followed into a loop: a heartbeat interval of zero or less had it connect
and drop the stream at once, a negative backoff reconnect thousands of
times a second, an `ftp://` address talk plaintext gRPC to it."""

from __future__ import annotations

from typing import Any

import pytest

import policyhub

SERVER = "http://127.0.0.1:50051"


def subscription(**settings: Any) -> policyhub.Subscription:
    endpoints = settings.pop("endpoints", SERVER)
    namespace = settings.pop("namespace", "payments")
    return policyhub.Subscription(endpoints, namespace, **settings)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"heartbeat_interval": -1.0},
            r"heartbeat_interval must be at least 0\.001 seconds, got -1\.0",
        ),
        ({"heartbeat_interval": 0}, r"heartbeat_interval .* got 0"),
        ({"heartbeat_interval": float("nan")}, r"heartbeat_interval .* got nan"),
        ({"backoff": (-1.0, 30.0)}, r"backoff initial delay must be at least .* got -1\.0"),
        ({"backoff": (0.0, 30.0)}, r"backoff initial delay .* got 0\.0"),
        ({"backoff": (1.0, -30.0)}, r"backoff maximum delay .* got -30\.0"),
        (
            {"backoff": (5.0, 1.0)},
            r"backoff must be \(initial, maximum\) with initial <= maximum, got \(5\.0, 1\.0\)",
        ),
        ({"rebalance_interval": 0.0}, r"rebalance_interval .* got 0\.0"),
        ({"report_spread": -0.5}, r"report_spread must be zero or at least .* got -0\.5"),
        ({"max_checkpoint_age": 0}, r"max_checkpoint_age .* got 0"),
        ({"max_checkpoint_age": float("inf")}, r"max_checkpoint_age .* got inf"),
        (
            {"endpoints": "ftp://127.0.0.1:50051"},
            r"endpoint 'ftp://127\.0\.0\.1:50051' is not an http:// or https:// address",
        ),
        ({"endpoints": "127.0.0.1:50051"}, r"endpoint '127\.0\.0\.1:50051' is not"),
        (
            {"endpoints": "http://127.0.0.1:50051/policyhub"},
            r"endpoint 'http://127\.0\.0\.1:50051/policyhub' is not",
        ),
        ({"endpoints": "http://127.0.0.1:port"}, r"endpoint 'http://127\.0\.0\.1:port' is not"),
        (
            {"endpoints": [SERVER, "gopher://replica-2:50051"]},
            r"endpoint 'gopher://replica-2:50051'",
        ),
        ({"endpoints": []}, r"endpoints must name at least one address, got none"),
        ({"namespace": ""}, r"namespace must not be empty"),
        ({"cosignatures": 1}, r"cosignatures must be between 0 and the 0 witnesses given, got 1"),
        ({"cosignatures": -1}, r"cosignatures .* got -1"),
        (
            {"witnesses": ["not-a-key"], "cosignatures": 1},
            r"witnesses: 'not-a-key' is not a cosignature/v1 verifier key",
        ),
    ],
)
def test_a_setting_out_of_range_is_a_value_error_that_names_it(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        subscription(**settings)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"heartbeat_interval": "10"}, r"heartbeat_interval must be a number of seconds, not str"),
        ({"heartbeat_interval": True}, r"heartbeat_interval must be a number of seconds, not bool"),
        ({"backoff": 1.0}, r"backoff must be a pair \(initial, maximum\) of seconds, got 1\.0"),
        ({"report_spread": None}, r"report_spread must be a number of seconds, not NoneType"),
        ({"token": "eyJhbGciOi"}, r"token must be a callable .* not str"),
        ({"names": "card-limits"}, r"names must be an iterable of str, not str"),
        ({"endpoints": [SERVER, 50051]}, r"endpoints must hold str, not int"),
        ({"namespace": None}, r"namespace must be a str, not NoneType"),
        ({"tls": {"ca_certificate": b""}}, r"tls must be a policyhub\.Tls, not dict"),
        ({"cosignatures": 1.0}, r"cosignatures must be an int, not float"),
    ],
)
def test_a_setting_of_the_wrong_type_is_a_type_error_that_names_it(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        subscription(**settings)


def test_settings_in_range_are_taken_as_given() -> None:
    followed = subscription(
        endpoints=["http://127.0.0.1:50051/", "https://replica-2"],
        names=("card-limits", "checkout", "card-limits"),
        heartbeat_interval=0.2,
        backoff=(0.001, 0.001),
        report_spread=0,
        max_checkpoint_age=None,
        token=policyhub.token_file("runtime.token"),
    )
    settings = followed.settings
    assert settings.endpoints == ["http://127.0.0.1:50051/", "https://replica-2"]
    assert settings.names == ["card-limits", "checkout"]
    assert (settings.heartbeat_interval, settings.report_spread) == (0.2, 0.0)
    assert (settings.backoff_initial, settings.backoff_max) == (0.001, 0.001)
    assert settings.max_checkpoint_age is None
