"""smtp_test_util.py - helpers shared by test/crash_test.py and test/stress.py (both import it
from their own directory, so either runs as `python3 test/x.py` from anywhere)."""


def strip_received(data):
    """The stored file without its first header field, which must be our Received field."""
    if not data.startswith(b"Received: "):
        return None
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return None
        pos = end + 2
        if data[pos:pos + 1] not in (b" ", b"\t"):
            return data[pos:]
