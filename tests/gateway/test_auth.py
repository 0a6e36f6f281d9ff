"""API keys with a policy (tenant, priority) and the priority a request is served at."""

import pytest

from sarathi_serve.common.errors import InvalidArgument
from sarathi_serve.gateway.auth import ApiKeys, Caller, KeyPolicy, parse_key_line, tenant_of


def test_key_lines_with_and_without_a_policy():
    assert parse_key_line("k1") == ("k1", KeyPolicy())
    assert parse_key_line("k2 tenant=acme priority=-2") == ("k2", KeyPolicy("acme", -2))
    assert parse_key_line("k3  priority=4") == ("k3", KeyPolicy("", 4))


@pytest.mark.parametrize(
    "line, problem",
    [
        ("k weight=2", "expected tenant, priority, max_concurrent, tokens_per_minute=VALUE"),
        ("k tenant=", "expected tenant, priority"),
        ("k max_concurrent=0", "max_concurrent: expected a whole number >= 1"),
        ("k tokens_per_minute=1e3", "tokens_per_minute: expected a whole number >= 1"),
        ("k priority=high", "priority: expected an integer"),
        ("k priority=2147483648", "priority: out of the int32 range"),
        ("k tenant=" + "x" * 257, "tenant: at most 256"),
    ],
)
def test_a_bad_key_line_names_the_problem_never_the_key(line, problem):
    with pytest.raises(ValueError, match=problem) as info:
        parse_key_line(line)
    assert "k " not in str(info.value)


def test_the_file_names_the_line_at_fault(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# keys\nok-key tenant=a\n\nbad-key priority=x\n")
    with pytest.raises(ValueError, match=r"keys, line 4: priority: expected an integer"):
        ApiKeys.load(keys_file=str(keys))


def test_callers_of_named_unnamed_and_no_keys(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("named tenant=acme priority=3\nplain\n")
    api_keys = ApiKeys.load("env-key", str(keys))
    assert api_keys.allows("Bearer named") and api_keys.allows("Bearer env-key")
    assert not api_keys.allows("Bearer other") and not api_keys.allows(None)
    assert api_keys.caller("Bearer named") == Caller("acme", KeyPolicy("acme", 3))
    assert api_keys.caller("Bearer plain").tenant == tenant_of("Bearer plain")  # a hash
    assert "plain" not in api_keys.caller("Bearer plain").tenant
    assert api_keys.caller(None) == Caller()


def test_the_priority_served_body_then_header_then_the_keys_never_below_the_keys():
    open_caller, batch = Caller(), Caller("t", KeyPolicy("t", 5))
    assert open_caller.priority(None) == 0
    assert open_caller.priority(-7) == -7
    assert open_caller.priority(None, " -2 ") == -2
    assert open_caller.priority(1, "-2") == 1  # the body wins over the header
    assert batch.priority(None) == 5
    assert batch.priority(9) == 9  # it may ask to go later
    assert batch.priority(-3) == 5 and batch.priority(None, "-3") == 5  # never earlier


@pytest.mark.parametrize("header", ["soon", "1.5", str(2**31)])
def test_a_bad_priority_header_is_invalid_argument(header):
    with pytest.raises(InvalidArgument, match="x-sarathi-priority"):
        Caller().priority(None, header)
