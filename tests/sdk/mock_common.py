"""What the mock's SDK scripts (mock_openai.py, mock_anthropic.py) share.

Run by tests/mock.rs with plain python (no pytest): MOCK_BASE_URL is the
mock's root (http://127.0.0.1:PORT), MOCK_KEY the upstream key it requires.
"""

import contextlib
import os
import sys
import traceback
import uuid

import httpx2 as httpx  # the HTTP client the SDKs ship (openai 3.x, anthropic 2.x)

BASE_URL = os.environ["MOCK_BASE_URL"]
KEY = os.environ["MOCK_KEY"]


class Raised:
    value = None


@contextlib.contextmanager
def raises(kind):
    """Like pytest.raises, without pytest."""
    caught = Raised()
    try:
        yield caught
    except kind as e:  # noqa: PERF203
        caught.value = e
        return
    raise AssertionError(f"{kind.__name__} was not raised")


def strict(model):
    """Validates what the SDK parsed against its own type, as pydantic would.

    The SDKs build response objects without validation (a missing or
    mistyped field passes silently), so each object is validated again from
    its own data: a field the mock forgot, or a wrong literal, fails here.
    """
    return type(model).model_validate(model.to_dict())


def fresh_test_id():
    """A fresh x-tollgate-test value, to count one test's calls."""
    return f"sdk-{uuid.uuid4().hex[:12]}"


def calls():
    return httpx.get(f"{BASE_URL}/mock/calls", timeout=10).json()


def run(namespace):
    tests = [(n, f) for n, f in sorted(namespace.items()) if n.startswith("test_") and callable(f)]
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


def main(namespace):
    sys.exit(run(namespace))
