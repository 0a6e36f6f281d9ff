"""The internal token: where the services find it, and what a client sends."""

import os
import stat

from sarathi_serve.common.auth import (
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    TOKEN_FILE_NAME,
    InternalToken,
    bearer_key,
)


def test_the_token_comes_from_the_environment_a_file_or_the_run(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    assert not InternalToken.from_env(tmp_path).enabled  # none anywhere: open
    made = InternalToken.create(tmp_path)
    path = tmp_path / TOKEN_FILE_NAME
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(made.token) >= 32
    assert InternalToken.from_env(tmp_path).token == made.token  # what the CLI finds
    assert InternalToken.create(tmp_path).token != made.token  # a new run, a new token
    secret = tmp_path / "mounted"
    secret.write_text("from-a-secret\n")
    monkeypatch.setenv(TOKEN_FILE_ENV, str(secret))
    assert InternalToken.from_env(tmp_path).token == "from-a-secret"
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert InternalToken.from_env(tmp_path).token == "from-env"


def test_only_the_token_is_allowed():
    token = InternalToken("s3cret")
    assert token.metadata == (("authorization", "Bearer s3cret"),)
    assert token.allows("Bearer s3cret") and token.allows("bearer  s3cret ")
    for wrong in (None, "", "s3cret", "Bearer", "Bearer other", "Basic s3cret"):
        assert not token.allows(wrong)
    open_ = InternalToken()
    assert open_.allows(None) and open_.metadata == ()
    assert bearer_key("Bearer k") == "k" and bearer_key("Token k") == ""
