"""What the gateway's SDK scripts share: a pytest-free runner and `raises`.

The scripts run with plain python (tests/support/http.rs runs them); each
prints `sdk: N passed, M failed` last and exits non-zero on a failure.
"""

import contextlib
import sys
import traceback


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
