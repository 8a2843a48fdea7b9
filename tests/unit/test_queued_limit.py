"""MM_MAX_QUEUED_PER_KEY without services: how a key is named in Redis and how a refusal reads."""

from mm.gateway.openai_shape import openai_error
from mm.gateway.queued_limit import KEY_ID_CHARS, TooManyQueued, key_id


def test_a_key_is_named_by_a_short_one_way_hash():
    name = key_id("sk-secret-key")

    assert len(name) == KEY_ID_CHARS and all(c in "0123456789abcdef" for c in name)
    assert name == key_id("sk-secret-key") != key_id("sk-secret-kez")
    assert "secret" not in name


def test_a_refusal_is_a_429_naming_the_setting_in_both_apis_shapes():
    refused = TooManyQueued(3, 3)
    openai = openai_error(refused).body()["error"]

    assert refused.status == 429 and "MM_MAX_QUEUED_PER_KEY allows (3)" in refused.message
    assert openai["type"] == "rate_limit_error" and openai["code"] == "rate_limit_exceeded"
    assert openai["message"] == refused.message
