"""Console logins without a broker: the token check, the CSRF token and the origin check."""

from __future__ import annotations

from intent.console.sessions import Session, check_same_origin, matching_token


def test_a_token_matches_only_a_configured_token() -> None:
    tokens = ("first-token", "second-token")
    assert matching_token("second-token", tokens) == "second-token"
    assert matching_token("second-toke", tokens) is None
    assert matching_token("", tokens) is None
    assert matching_token("anything", ()) is None


def test_the_csrf_token_is_bound_to_the_session_and_never_the_session_id() -> None:
    one = Session("session-one", "token", 0.0)
    assert one.csrf_token == Session("session-one", "other token", 1.0).csrf_token
    assert one.csrf_token != Session("session-two", "token", 0.0).csrf_token
    assert "session-one" not in one.csrf_token and len(one.csrf_token) == 64


def test_a_state_changing_call_must_come_from_the_consoles_own_origin() -> None:
    host = {"Host": "127.0.0.1:6066"}
    assert check_same_origin({**host, "Origin": "http://127.0.0.1:6066"}) is None
    assert check_same_origin({**host, "Origin": "https://127.0.0.1:6066"}) is None  # behind a TLS proxy
    assert check_same_origin({**host, "Referer": "http://127.0.0.1:6066/console/"}) is None
    refused = check_same_origin({**host, "Origin": "http://127.0.0.1:8000"})
    assert refused is not None and "127.0.0.1:8000" in refused
    assert check_same_origin({**host, "Origin": "http://localhost:6066"}) is not None
    assert check_same_origin({**host, "Origin": "null"}) is not None  # a sandboxed frame or a file
    assert check_same_origin(host) is not None  # neither Origin nor Referer: not from the page
    # Origin wins over Referer: a forged-looking Referer does not rescue a foreign Origin
    assert check_same_origin({**host, "Origin": "http://evil.example", "Referer": "http://127.0.0.1:6066/"}) is not None
