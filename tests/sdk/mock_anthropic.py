"""The official anthropic Python SDK against the mock upstream's /v1/messages.

Every shape must parse into the SDK's types and validate against them (see
mock_common.strict); every error status must raise the SDK's exception for
it. Run by tests/mock.rs.
"""

import os
import sys

import anthropic
import httpx2 as httpx  # the HTTP client the SDKs ship (openai 3.x, anthropic 2.x)
from anthropic.types import Message

sys.path.insert(0, os.path.dirname(__file__))
from mock_common import BASE_URL, KEY, calls, fresh_test_id, main, raises, strict  # noqa: E402

MODEL = "claude-sonnet-4-5"


def client(key=KEY, **kw):
    kw.setdefault("max_retries", 0)
    return anthropic.Anthropic(base_url=BASE_URL, api_key=key, timeout=20, **kw)


def create(text="hello world", key=KEY, max_tokens=64, **kw):
    return client(key).messages.create(
        model=MODEL, max_tokens=max_tokens, messages=[{"role": "user", "content": text}], **kw
    )


def test_message():
    raw = client().messages.with_raw_response.create(
        model=MODEL,
        max_tokens=64,
        system="be brief",
        messages=[{"role": "user", "content": [{"type": "text", "text": "hello world"}]}],
    )
    m = strict(raw.parse())
    assert isinstance(m, Message)
    Message.model_validate(raw.http_response.json())
    assert m.content[0].type == "text" and m.content[0].text == "mock reply: hello world"
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert (m.usage.input_tokens, m.usage.output_tokens) == (4, 4)
    assert raw.headers["request-id"].startswith("req_")
    for name in ["anthropic-ratelimit-requests-limit", "anthropic-ratelimit-tokens-remaining"]:
        assert name in raw.headers, name


def test_max_tokens_stops_the_reply():
    m = strict(create(text="one two three", max_tokens=3))
    assert m.stop_reason == "max_tokens" and m.content[0].text == "mock reply: one"
    assert m.usage.output_tokens == 3


def test_stream_events_in_order():
    events = [strict(e) for e in create(text="stream me", stream=True)]
    types = [e.type for e in events]
    deduped = [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]
    # The SDK drops `ping` itself.
    assert deduped == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ], types
    assert events[0].message.usage.input_tokens == 2 and events[0].message.content == []
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == "mock reply: stream me"
    assert events[-2].delta.stop_reason == "end_turn" and events[-2].usage.output_tokens == 4


def test_stream_helper_accumulates():
    with client().messages.stream(
        model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "cut me"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "mock reply:" and final.stop_reason == "max_tokens"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (2, 2)


def test_error_event_mid_stream():
    received = []
    with raises(anthropic.APIStatusError) as e:
        for event in create(text="a b c MOCK:error_after=2", stream=True):
            if event.type == "content_block_delta":
                received.append(event.delta.text)
    assert "".join(received) == "mock reply:"
    assert e.value.body["error"]["type"] == "overloaded_error"


def test_each_status_raises_its_exception():
    for status, kind, error_type in [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (413, anthropic.APIStatusError, "request_too_large"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, getattr(anthropic, "OverloadedError", anthropic.InternalServerError), "overloaded_error"),
    ]:
        with raises(kind) as e:
            create(text=f"MOCK:status={status}")
        assert e.value.status_code == status
        assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == error_type, e.value.body
        assert e.value.request_id == e.value.response.headers["request-id"]
        assert e.value.body["request_id"] == e.value.request_id


def test_rate_limits_carry_retry_after():
    with raises(anthropic.RateLimitError) as e:
        create(text="MOCK:status=429,retry_after=3")
    assert e.value.response.headers["retry-after"] == "3"


def test_wrong_key_is_authentication_error():
    with raises(anthropic.AuthenticationError) as e:
        create(key="sk-up-wrong")
    assert e.value.body["error"]["type"] == "authentication_error"


def test_required_headers_and_fields():
    url = f"{BASE_URL}/v1/messages"
    body = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    no_key = httpx.post(url, json=body, headers={"anthropic-version": "2023-06-01"})
    assert no_key.status_code == 401 and no_key.json()["error"]["type"] == "authentication_error"
    no_version = httpx.post(url, json=body, headers={"x-api-key": KEY})
    assert no_version.status_code == 400 and no_version.json()["error"]["type"] == "invalid_request_error"
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    no_max = httpx.post(url, json={k: v for k, v in body.items() if k != "max_tokens"}, headers=headers)
    assert no_max.status_code == 400 and "max_tokens" in no_max.json()["error"]["message"]
    assert no_max.headers["request-id"] == no_max.json()["request_id"]


def test_models_in_anthropics_shape():
    page = client().models.list()
    assert [strict(m).id for m in page.data] == ["gpt-4o-mini", "claude-sonnet-4-5"]


def test_sdk_retries_an_overloaded_mock():
    test = fresh_test_id()
    c = client(max_retries=2, default_headers={"x-tollgate-test": test})
    m = c.messages.create(
        model=MODEL, max_tokens=16, messages=[{"role": "user", "content": f"{test} MOCK:status=529,times=2"}]
    )
    assert m.content[0].text.startswith("mock reply:")
    assert calls()["tests"][test] == 3


if __name__ == "__main__":
    main(globals())
