"""The official anthropic Python SDK against a running tollgate gateway.

Run by tests/gateway_endpoints.rs (plain python, no pytest), which starts the
gateway example with its built-in mock upstream and sets TOLLGATE_BASE_URL
(the gateway's root, as the SDK wants it). Keys are the ones that test writes
into its config. The SDK keeps its default retries: every refusal below says
`x-should-retry: false` or is a 4xx the SDK does not retry.
"""

import os
import sys

import anthropic

sys.path.insert(0, os.path.dirname(__file__))
from gateway_common import main, raises  # noqa: E402

BASE_URL = os.environ["TOLLGATE_BASE_URL"]
MODEL = "claude-test"


def client(key="sk-test-ok", **kw):
    return anthropic.Anthropic(base_url=BASE_URL, api_key=key, timeout=20, **kw)


def create(key="sk-test-ok", text="hello world", **kw):
    return client(key).messages.create(
        model=kw.pop("model", MODEL),
        max_tokens=kw.pop("max_tokens", 64),
        messages=[{"role": "user", "content": text}],
        **kw,
    )


def test_message():
    m = create(text="hello world")
    assert m.content[0].text == "mock reply: hello world"
    assert m.usage.input_tokens == 2 and m.usage.output_tokens == 4


def test_stream():
    with client().messages.stream(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "stream me"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "mock reply: stream me"
    assert final.usage.output_tokens == 4


def test_bad_key_is_authentication_error():
    with raises(anthropic.AuthenticationError) as e:
        create(key="sk-test-unknown")
    assert e.value.status_code == 401
    assert e.value.body["error"]["type"] == "authentication_error"
    assert "sk-test-unknown" not in str(e.value)


def test_disabled_key_and_forbidden_model_are_permission_denied():
    with raises(anthropic.PermissionDeniedError):
        create(key="sk-test-disabled")
    with raises(anthropic.PermissionDeniedError) as e:
        create(key="sk-test-restricted")
    assert e.value.body["error"]["type"] == "permission_error"


def test_unknown_route_is_not_found():
    with raises(anthropic.NotFoundError):
        client().messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    with raises(anthropic.NotFoundError):
        client().models.retrieve("no-such-model")


def test_rate_limit_is_rate_limit_error():
    # The SDK retries a 429 after its `retry-after` (up to a minute here):
    # without retries, the second call in the minute is refused at once.
    create(key="sk-test-rpm")
    with raises(anthropic.RateLimitError) as e:
        client("sk-test-rpm", max_retries=0).messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "again"}]
        )
    assert e.value.body["error"]["type"] == "rate_limit_error"
    assert int(e.value.response.headers["retry-after"]) >= 1


def test_spent_budget_is_payment_required():
    with raises(anthropic.APIStatusError) as e:
        for _ in range(5):
            create(key="sk-test-budget")
    assert e.value.status_code == 402
    assert isinstance(e.value, anthropic.PaymentRequiredError)
    assert e.value.body["error"]["type"] == "billing_error"


def test_empty_balance_is_permission_denied():
    with raises(anthropic.PermissionDeniedError) as e:
        create(key="sk-test-balance")
    assert e.value.status_code == 403
    assert e.value.body["error"]["type"] == "billing_error"


def test_overloaded_upstream_is_overloaded_error():
    with raises(anthropic.APIStatusError) as e:
        create(text="busy MOCK:status=529")
    assert e.value.status_code == 529
    assert e.value.body["error"]["type"] == "overloaded_error"


def test_failing_stream_raises_mid_iteration():
    received = []
    with raises(anthropic.APIStatusError):
        stream = create(text="one two three four five MOCK:cut_after=2", stream=True)
        for event in stream:
            if event.type == "content_block_delta":
                received.append(event.delta.text)
    assert "".join(received).startswith("mock")


if __name__ == "__main__":
    main(globals())
