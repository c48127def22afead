"""The HiveOps guide's "Test Rate Limiting" loop, against the gateway.

Run by tests/gateway_routing.rs with the gateway's embedded demo config
(60 requests per minute for the demo key). The loop is the guide's, word for
word, but for `max_retries=0`: with its default retries the SDK honours the
gateway's `retry-after` (the exact wait until the oldest request leaves the
minute, about 54 s here) and then succeeds, which is the limit working, but
would take minutes and print no "Rate limited!".
"""

import os
import sys
import time

from openai import OpenAI, RateLimitError

sys.path.insert(0, os.path.dirname(__file__))
from gateway_common import main  # noqa: E402

client = OpenAI(
    api_key="sk-tollgate-demo-0123456789",
    base_url=os.environ["TOLLGATE_BASE_URL"],
    max_retries=0,
    timeout=20,
)


def test_the_61st_request_in_a_minute_is_rate_limited():
    limited_at = None
    # Send 65 requests quickly to trigger rate limit
    for i in range(65):
        try:
            response = client.chat.completions.create(
                model="llama3:8b-instruct-q8_0",
                messages=[{"role": "user", "content": f"Message {i}"}],
            )
            print(f"Request {i}: Success")
        except RateLimitError as e:
            print(f"Request {i}: Rate limited!")
            limited_at = i
            assert e.code == "rate_limit_exceeded", e.code
            assert "60 requests per minute" in e.message, e.message
            assert e.response.headers["x-ratelimit-limit-requests"] == "60"
            assert e.response.headers["x-ratelimit-remaining-requests"] == "0"
            break
        time.sleep(0.1)
    assert limited_at == 60, limited_at


if __name__ == "__main__":
    main(globals())
