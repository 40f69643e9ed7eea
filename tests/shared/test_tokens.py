import pytest

from shared.errors import TokenExpiredError, UnauthorizedError
from shared.tokens import issue_token, verify_token

KEY = "k" * 32


def test_round_trip():
    token, exp = issue_token(KEY, "user-1", 60, now=1000)
    assert exp == 1060
    assert verify_token([KEY], token, now=1059) == "user-1"


def test_expired():
    token, _ = issue_token(KEY, "user-1", 60, now=1000)
    with pytest.raises(TokenExpiredError):
        verify_token([KEY], token, now=1060)


def test_previous_key_still_accepted_during_rotation():
    token, _ = issue_token("old" * 8, "u", 60, now=0)
    assert verify_token([KEY, "old" * 8], token, now=1) == "u"
    with pytest.raises(UnauthorizedError):
        verify_token([KEY], token, now=1)


@pytest.mark.parametrize("mangle", [
    lambda t: t + "x",
    lambda t: t.replace(".", ""),
    lambda t: "",
    lambda t: "a.b",
    lambda t: t.split(".")[0][:-2] + "AA." + t.split(".")[1],
])
def test_tampered_tokens_are_refused(mangle):
    token, _ = issue_token(KEY, "user-1", 60, now=0)
    with pytest.raises(UnauthorizedError):
        verify_token([KEY], mangle(token), now=1)
