"""The official openai Python SDK against a running tollgate gateway.

Run by tests/gateway.rs (plain python, no pytest needed), which starts the gateway example (mock upstream) and
sets TOLLGATE_BASE_URL. Keys are the ones that test writes into its config.
"""

import os

import contextlib
import sys
import traceback

import httpx2 as httpx  # the HTTP client the SDKs ship (openai 3.x, anthropic 2.x)
import openai

BASE_URL = os.environ["TOLLGATE_BASE_URL"]
MODEL = "llama3:8b-instruct-q8_0"


class Raised:
    value = None


@contextlib.contextmanager
def raises(kind):
    """Like raises, without needing pytest."""
    caught = Raised()
    try:
        yield caught
    except kind as e:  # noqa: PERF203
        caught.value = e
        return
    raise AssertionError(f"{kind.__name__} was not raised")


def client(key="sk-test-ok"):
    # max_retries=0: every retry we observe is the gateway's, not the SDK's.
    return openai.OpenAI(base_url=BASE_URL, api_key=key, max_retries=0, timeout=20)


def chat(key="sk-test-ok", text="hello world", **kw):
    return client(key).chat.completions.create(
        model=kw.pop("model", MODEL),
        messages=[{"role": "user", "content": text}],
        **kw,
    )


def test_success():
    r = chat(text="hello world")
    assert r.choices[0].message.content == "mock reply: hello world"
    assert r.usage.prompt_tokens == 2
    assert r.usage.completion_tokens == 4


def test_streaming_without_usage_request_hides_usage_chunk():
    stream = chat(text="stream me", stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "mock reply: stream me"
    assert all(c.usage is None for c in chunks), "the gateway's usage chunk leaked"


def test_streaming_with_usage():
    stream = chat(text="count me", stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens == 4


def test_missing_key_is_authentication_error():
    r = httpx.post(f"{BASE_URL}/chat/completions", json={"model": MODEL, "messages": []})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "missing_api_key"


def test_bad_keys_are_authentication_errors():
    for key, code in [
        ("sk-test-unknown", "invalid_api_key"),
        ("sk-test-expired", "expired_api_key"),
        ("sk-test-revoked", "revoked_api_key"),
    ]:
        with raises(openai.AuthenticationError) as e:
            chat(key=key)
        assert e.value.code == code, (key, e.value.code)
        assert key not in str(e.value.body) and key not in e.value.message


def test_disabled_key_is_permission_denied():
    with raises(openai.PermissionDeniedError) as e:
        chat(key="sk-test-disabled")
    assert e.value.code == "account_disabled"


def test_model_not_allowed():
    with raises(openai.PermissionDeniedError) as e:
        chat(key="sk-test-restricted")
    assert e.value.code == "model_not_allowed"
    assert e.value.param == "model"


def test_unknown_model_is_bad_request():
    with raises(openai.BadRequestError) as e:
        chat(model="no-such-model")
    assert e.value.code == "invalid_model"
    assert e.value.body["message"] == "Invalid model 'no-such-model' specified"


def test_rate_limit_has_retry_after():
    chat(key="sk-test-rpm")
    with raises(openai.RateLimitError) as e:
        chat(key="sk-test-rpm")
    assert int(e.value.response.headers["retry-after"]) >= 1
    assert e.value.code == "rate_limit_exceeded"


def test_budget_exceeded_is_402():
    with raises(openai.APIStatusError) as e:
        for _ in range(3):
            chat(key="sk-test-budget")
    assert e.value.status_code == 402
    assert e.value.code == "budget_exceeded"


def test_empty_balance_is_permission_denied():
    with raises(openai.PermissionDeniedError) as e:
        chat(key="sk-test-balance")
    assert e.value.code == "insufficient_balance"


def test_upstream_503_twice_succeeds_after_gateway_retries():
    r = chat(text="flaky MOCK:status=503,times=2")
    assert r.choices[0].message.content.startswith("mock reply: flaky")


def test_upstream_400_is_not_retried():
    with raises(openai.BadRequestError):
        chat(text="bad MOCK:status=400,times=1")


def test_cut_stream_raises_mid_iteration():
    stream = chat(text="one two three four MOCK:cut_after=3", stream=True)
    received = []
    with raises(openai.APIError) as e:
        for c in stream:
            if c.choices:
                received.append(c.choices[0].delta.content or "")
    assert "".join(received).startswith("mock")
    assert e.value.code == "bad_gateway" or "stream" in e.value.message.lower()


def main():
    tests = [(n, f) for n, f in sorted(globals().items()) if n.startswith("test_") and callable(f)]
    failed = 0
    for name, test in tests:
        try:
            test()
            print(f"ok   {name}")
        except Exception:  # noqa: BLE001
            failed += 1
            print(f"FAIL {name}")
            traceback.print_exc()
    print(f"sdk: {len(tests) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
