"""The official openai Python SDK against the mock upstream.

Every shape the mock sends on the OpenAI endpoints must parse into the SDK's
types, and validate against them (see mock_common.strict); every error
status must raise the SDK's exception for it. Run by tests/mock.rs.
"""

import base64
import os
import struct
import sys

import httpx2 as httpx  # the HTTP client the SDKs ship (openai 3.x, anthropic 2.x)
import openai
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

sys.path.insert(0, os.path.dirname(__file__))
from mock_common import BASE_URL, KEY, calls, fresh_test_id, main, raises, strict  # noqa: E402

MODEL = "gpt-4o-mini"


def client(key=KEY, **kw):
    kw.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=f"{BASE_URL}/v1", api_key=key, timeout=20, **kw)


def chat(text="hello world", key=KEY, **kw):
    return client(key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], **kw
    )


# Chat completions


def test_chat():
    raw = client().chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hello world"}], n=2
    )
    r = raw.parse()
    assert isinstance(r, ChatCompletion)
    ChatCompletion.model_validate(raw.http_response.json())
    assert [c.message.content for c in r.choices] == ["mock reply: hello world"] * 2
    assert [c.finish_reason for c in r.choices] == ["stop", "stop"]
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (2, 8, 10)
    assert r._request_id == raw.headers["x-request-id"] and r._request_id.startswith("req_")
    for name in ["x-ratelimit-limit-requests", "x-ratelimit-remaining-tokens", "openai-processing-ms"]:
        assert name in raw.headers, name


def test_chat_max_tokens_cuts_the_reply():
    r = strict(chat(text="one two three", max_tokens=3))
    assert r.choices[0].message.content == "mock reply: one"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3


def test_chat_stream_without_usage_has_no_usage_key():
    chunks = [strict(c) for c in chat(text="stream me", stream=True)]
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "mock reply: stream me"
    assert all("usage" not in c.to_dict() for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_stream_with_usage_ends_with_the_usage_chunk():
    chunks = [strict(c) for c in chat(text="count me", stream=True, n=2, stream_options={"include_usage": True})]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert all(c.usage is None for c in chunks[:-1])
    for index in (0, 1):
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == index)
        assert text == "mock reply: count me", (index, text)


def test_chat_stream_with_openai_null_usage():
    chunks = [strict(c) for c in chat(text="MOCK:usage=null", stream=True, stream_options={"include_usage": True})]
    assert all("usage" in c.to_dict() and c.usage is None for c in chunks[:-1])
    assert chunks[-1].usage.prompt_tokens == 1


def test_chat_stream_error_raises_mid_iteration():
    received = []
    with raises(openai.APIError) as e:
        for c in chat(text="a b c MOCK:error_after=2", stream=True):
            received.append(c.choices[0].delta.content or "")
    assert "".join(received) == "mock reply:"
    assert e.value.type == "server_error"


# Legacy completions


def test_completions():
    r = strict(client().completions.create(model=MODEL, prompt=["a b", [1, 2, 3]], n=2, max_tokens=3))
    assert isinstance(r, Completion)
    assert [c.text for c in r.choices] == ["mock reply: a", "mock reply: a", "mock reply: 1", "mock reply: 1"]
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens == 12


def strict_completion_chunk(chunk):
    """Validates a streamed completion chunk as a Completion.

    The SDK types streamed chunks with the non-streamed Completion, whose
    finish_reason is not Optional, while OpenAI sends null until a choice's
    last chunk: only that one field is let through as null.
    """
    data = chunk.to_dict()
    for choice in data["choices"]:
        if choice["finish_reason"] is None:
            choice["finish_reason"] = "stop"
    Completion.model_validate(data)
    return chunk


def test_completions_stream():
    chunks = [strict_completion_chunk(c) for c in client().completions.create(
        model=MODEL, prompt="say this", stream=True, stream_options={"include_usage": True}
    )]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "mock reply: say this"
    assert chunks[-1].usage.completion_tokens == 4 and chunks[-1].choices == []


# Embeddings


def test_embeddings_default_encoding_is_decoded_by_the_sdk():
    # The SDK asks for base64 by default and decodes it itself.
    r = strict(client().embeddings.create(model="text-embedding-3-small", input=["a b", "c"]))
    assert isinstance(r, CreateEmbeddingResponse)
    assert [len(d.embedding) for d in r.data] == [1536, 1536]
    assert abs(sum(x * x for x in r.data[0].embedding) - 1.0) < 1e-3
    assert (r.usage.prompt_tokens, r.usage.total_tokens) == (3, 3)


def test_embeddings_float_and_base64_agree():
    floats = client().embeddings.create(model=MODEL, input="same text", dimensions=8, encoding_format="float")
    raw = client().embeddings.create(model=MODEL, input="same text", dimensions=8, encoding_format="base64")
    decoded = struct.unpack("<8f", base64.b64decode(raw.data[0].embedding))
    assert all(abs(a - b) < 1e-6 for a, b in zip(floats.data[0].embedding, decoded))


def test_embeddings_token_arrays():
    r = strict(client().embeddings.create(model=MODEL, input=[[1, 2, 3], [4]], dimensions=4))
    assert len(r.data) == 2 and r.usage.prompt_tokens == 4
    r = strict(client().embeddings.create(model=MODEL, input=[5, 6], dimensions=4))
    assert len(r.data) == 1 and r.usage.prompt_tokens == 2


# Responses API

STREAM_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


def test_responses():
    r = strict(client().responses.create(model=MODEL, input="hello there", instructions="be brief"))
    assert r.status == "completed" and r.output_text == "mock reply: hello there"
    u = r.usage
    assert (u.input_tokens, u.output_tokens, u.total_tokens) == (4, 4, 8)
    assert u.input_tokens_details.cached_tokens == 0 and u.output_tokens_details.reasoning_tokens == 0


def test_responses_max_output_tokens_is_incomplete():
    r = strict(client().responses.create(model=MODEL, input="MOCK:words=40", max_output_tokens=16))
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 16


def test_responses_stream_events_in_order():
    events = [strict(e) for e in client().responses.create(model=MODEL, input=[{"role": "user", "content": "hi you"}], stream=True)]
    types = [e.type for e in events]
    deduped = [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]
    assert deduped == STREAM_ORDER + ["response.completed"], types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "mock reply: hi you"
    usage = events[-1].response.usage
    assert (usage.input_tokens, usage.output_tokens) == (2, 4)


def test_responses_stream_helper_accumulates():
    with client().responses.stream(model=MODEL, input="one two") as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.output_text == "mock reply: one two" and final.usage.total_tokens == 6


def test_responses_stream_incomplete():
    events = [strict(e) for e in client().responses.create(
        model=MODEL, input="MOCK:words=30", max_output_tokens=16, stream=True
    )]
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


def test_responses_stream_failure_events():
    events = [strict(e) for e in client().responses.create(model=MODEL, input="x MOCK:error_after=1", stream=True)]
    types = [e.type for e in events]
    assert types[-2:] == ["error", "response.failed"], types
    assert types.count("response.output_text.delta") == 1
    assert events[-2].code == "server_error" and events[-2].message
    assert events[-1].response.status == "failed" and events[-1].response.error.code == "server_error"
    assert [e.sequence_number for e in events] == list(range(len(events)))


# Models


def test_models():
    page = client().models.list()
    assert [strict(m).id for m in page.data] == ["gpt-4o-mini", "claude-sonnet-4-5"]
    assert strict(client().models.retrieve("gpt-4o-mini")).id == "gpt-4o-mini"
    with raises(openai.NotFoundError):
        client().models.retrieve("no-such-model")


# Errors


def test_each_status_raises_its_exception():
    for status, kind in [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (409, openai.ConflictError),
        (422, openai.UnprocessableEntityError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ]:
        with raises(kind) as e:
            chat(text=f"MOCK:status={status}")
        assert e.value.status_code == status
        assert e.value.request_id == e.value.response.headers["x-request-id"]


def test_insufficient_quota():
    with raises(openai.RateLimitError) as e:
        chat(text="MOCK:status=429,type=insufficient_quota")
    assert e.value.code == "insufficient_quota" and e.value.type == "insufficient_quota"
    assert e.value.body["message"].startswith("You exceeded your current quota")
    assert e.value.response.headers["retry-after-ms"] == "20"


def test_wrong_and_missing_upstream_key():
    with raises(openai.AuthenticationError) as e:
        chat(key="sk-up-wrong-0000")
    assert e.value.code == "invalid_api_key"
    r = httpx.post(f"{BASE_URL}/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"


def test_sdk_retries_reach_the_mock_and_are_counted():
    # Default SDK retries: two 503s, then an answer; the mock saw three calls.
    test = fresh_test_id()
    c = client(max_retries=2, default_headers={"x-tollgate-test": test})
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"{test} MOCK:status=503,times=2"}])
    assert r.choices[0].message.content.startswith("mock reply:")
    assert calls()["tests"][test] == 3


if __name__ == "__main__":
    main(globals())
