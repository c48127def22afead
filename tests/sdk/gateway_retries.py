"""Retries that never stack: the official SDKs, with their default retry
settings (two retries), against the gateway in front of a counting mock.

Run by tests/gateway_retries.rs, which sets:
- TOLLGATE_BASE_URL: a gateway with the right upstream keys (root URL);
- TOLLGATE_BAD_BASE_URL: the same gateway with wrong upstream keys;
- MOCK_URL: the mock upstream's root, whose /mock/calls counts each
  test's calls by its `x-tollgate-test` header (the gateway forwards it);
- MAX_ATTEMPTS: the gateway's `retry.max_attempts`.

Each failure below must reach the upstream at most MAX_ATTEMPTS times per
client request: the gateway retries, then says `x-should-retry: false`.
"""

import os
import sys
import uuid

import anthropic
import httpx2 as httpx  # the HTTP client the SDKs ship (openai 3.x, anthropic 2.x)
import openai

sys.path.insert(0, os.path.dirname(__file__))
from gateway_common import main, raises  # noqa: E402

GOOD = os.environ["TOLLGATE_BASE_URL"]
BAD = os.environ["TOLLGATE_BAD_BASE_URL"]
MOCK = os.environ["MOCK_URL"]
MAX_ATTEMPTS = int(os.environ["MAX_ATTEMPTS"])
KEY = "sk-test-ok"


def calls(test_id):
    return httpx.get(f"{MOCK}/mock/calls", timeout=10).json()["tests"].get(test_id, 0)


def test_id():
    return f"retries-{uuid.uuid4().hex[:12]}"


def chat(text, base=GOOD, stream=False, **client_kw):
    tid = test_id()
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, timeout=20, **client_kw)
    try:
        result = client.chat.completions.create(
            model="gpt",
            messages=[{"role": "user", "content": text}],
            stream=stream,
            extra_headers={"x-tollgate-test": tid},
        )
        if stream:
            list(result)
        return tid, None
    except openai.APIError as e:
        return tid, e


def message(text, base=GOOD):
    tid = test_id()
    client = anthropic.Anthropic(base_url=base, api_key=KEY, timeout=20)
    try:
        client.messages.create(
            model="claude",
            max_tokens=16,
            messages=[{"role": "user", "content": text}],
            extra_headers={"x-tollgate-test": tid},
        )
        return tid, None
    except anthropic.APIError as e:
        return tid, e


def test_an_always_failing_upstream_sees_at_most_max_attempts_calls():
    tid, e = chat("fail MOCK:status=503")
    assert isinstance(e, openai.InternalServerError), repr(e)
    assert e.status_code == 503
    assert e.response.headers["x-should-retry"] == "false"
    assert calls(tid) == MAX_ATTEMPTS, calls(tid)


def test_an_upstream_rate_limit_retried_to_the_limit_is_not_retried_again():
    tid, e = chat("busy MOCK:status=429,retry_after_ms=10")
    assert isinstance(e, openai.RateLimitError), repr(e)
    assert e.response.headers["x-should-retry"] == "false"
    # No invitation to wait and retry what was retried already.
    assert "retry-after" not in e.response.headers
    assert calls(tid) == MAX_ATTEMPTS, calls(tid)


def test_a_long_upstream_delay_is_passed_on_for_the_client_to_wait():
    # Longer than the gateway waits (max_retry_after_secs): not retried
    # here, and the client learns when it may.
    tid, e = chat("later MOCK:status=429,retry_after=30", max_retries=0)
    assert isinstance(e, openai.RateLimitError), repr(e)
    assert e.response.headers["retry-after"] == "30"
    assert e.response.headers["x-should-retry"] == "true"
    assert calls(tid) == 1, calls(tid)


def test_a_reset_after_a_completion_was_sent_is_not_sent_again():
    # The upstream may have done, and billed, the work.
    tid, e = chat("reset MOCK:reset")
    assert isinstance(e, openai.APIStatusError) and e.status_code == 502, repr(e)
    assert e.response.headers["x-should-retry"] == "false"
    assert calls(tid) == 1, calls(tid)


def test_a_reset_stream_is_retried_by_the_gateway_only():
    tid, e = chat("reset MOCK:reset", stream=True)
    assert isinstance(e, openai.APIStatusError) and e.status_code == 502, repr(e)
    assert e.response.headers["x-should-retry"] == "false"
    assert calls(tid) == MAX_ATTEMPTS, calls(tid)


def test_the_gateways_spent_quota_is_a_503_not_the_tenants():
    tid, e = chat("quota MOCK:status=429,code=insufficient_quota")
    assert not isinstance(e, openai.RateLimitError), repr(e)
    assert isinstance(e, openai.InternalServerError) and e.status_code == 503, repr(e)
    assert e.code == "upstream_quota_exhausted", e.code
    assert calls(tid) == 1, calls(tid)


def test_a_wrong_upstream_key_is_a_5xx_for_the_openai_sdk():
    tid, e = chat("hello", base=BAD)
    assert not isinstance(e, openai.AuthenticationError), repr(e)
    assert isinstance(e, openai.InternalServerError) and e.status_code == 502, repr(e)
    assert e.code == "upstream_auth_failed", e.code
    assert "sk-up" not in e.message
    assert calls(tid) == 1, calls(tid)


def test_a_wrong_upstream_key_is_a_5xx_for_the_anthropic_sdk():
    tid, e = message("hello", base=BAD)
    assert not isinstance(e, anthropic.AuthenticationError), repr(e)
    assert isinstance(e, anthropic.InternalServerError) and e.status_code == 502, repr(e)
    assert calls(tid) == 1, calls(tid)


def test_an_always_overloaded_anthropic_upstream_sees_at_most_max_attempts_calls():
    tid, e = message("busy MOCK:status=529")
    assert isinstance(e, anthropic.OverloadedError), repr(e)
    assert e.response.headers["x-should-retry"] == "false"
    assert calls(tid) == MAX_ATTEMPTS, calls(tid)


def test_success_still_works():
    tid, e = chat("hello")
    assert e is None, repr(e)
    tid, e = message("hello")
    assert e is None, repr(e)


if __name__ == "__main__":
    main(globals())
