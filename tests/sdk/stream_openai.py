"""The official openai Python SDK consuming streams through StreamErrorTrailerLayer.

Run by tests/stream_sdk.rs as `python stream_openai.py <base_url> <scenario>...`.
For each scenario it streams a chat completion from `<base_url>/<scenario>/v1`
and prints one JSON line: what the SDK raised (class, status, message, code,
type) and the text it received before. Exit status 0 unless the script itself
breaks; the Rust test judges the results.
"""

import json
import sys

import openai


def run(base_url: str, scenario: str) -> dict:
    client = openai.OpenAI(
        base_url=f"{base_url}/{scenario}/v1",
        api_key="sk-test",
        max_retries=0,  # every failure we observe is the first one
        timeout=10,
    )
    result = {"scenario": scenario, "text": "", "raised": None}
    if scenario.startswith("responses"):
        return run_responses(client, result)
    try:
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Say hi"}],
            stream=True,
        )
        for chunk in stream:
            if chunk.choices:
                result["text"] += chunk.choices[0].delta.content or ""
    except openai.APIError as e:
        result.update(
            raised=type(e).__name__,
            is_api_error=isinstance(e, openai.APIError),
            status=getattr(e, "status_code", None),
            message=e.message,
            code=e.code,
            type=e.type,
        )
    return result


def run_responses(client, result: dict) -> dict:
    """A Responses stream: the events' types and sequence numbers, and the
    last two (the layer's, when it ended the stream) validated against the
    SDK's own types."""
    try:
        events = list(client.responses.create(model="gpt-4o-mini", input="Say hi", stream=True))
    except openai.APIError as e:
        result.update(raised=type(e).__name__, message=e.message)
        return result
    result["types"] = [e.type for e in events]
    result["sequence"] = [e.sequence_number for e in events]
    result["text"] = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    result["invalid"] = []
    for event in events[-2:]:
        try:
            type(event).model_validate(event.to_dict())
        except Exception as e:  # noqa: BLE001 - reported to the Rust test
            result["invalid"].append(f"{event.type}: {e}")
    error, failed = events[-2], events[-1]
    if error.type == "error" and failed.type == "response.failed":
        result["error"] = {"code": error.code, "message": error.message, "param": error.param}
        result["failed"] = {
            "id": failed.response.id,
            "status": failed.response.status,
            "code": failed.response.error.code,
            "message": failed.response.error.message,
        }
    return result


def main() -> None:
    base_url, scenarios = sys.argv[1], sys.argv[2:]
    for scenario in scenarios:
        print(json.dumps(run(base_url, scenario)), flush=True)


if __name__ == "__main__":
    main()
