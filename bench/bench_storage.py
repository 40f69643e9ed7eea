"""Throughput and peak Python memory of ``put_stream`` into LocalStore and into s3rver.

    .venv/bin/python bench/bench_storage.py [--mb 50] [--runs 3]

Each store gets a generated stream (never held in memory) of ``--mb`` MB: the
best of ``--runs`` timed runs gives MB/s, then one more run under tracemalloc
gives the peak of Python allocations during the call (tracemalloc slows Python
down, so it is not timed). s3rver 3.7.1 is started from node_modules on a free
loopback port via tests/s3server.py, so S3 numbers include its (Node) write to
disk and HTTP on loopback, not a real network.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.storage import LocalStore, S3Store, make_s3_client  # noqa: E402
from tests.s3server import start_s3rver  # noqa: E402

MB = 1024 * 1024


class GeneratedStream:
    """``total`` bytes produced on demand from one reusable 1 MB block."""

    _BLOCK = os.urandom(MB)

    def __init__(self, total: int):
        self.remaining = total

    def read(self, size: int = -1) -> bytes:
        n = min(self.remaining, len(self._BLOCK) if size is None or size < 0 else size, len(self._BLOCK))
        self.remaining -= n
        return self._BLOCK[:n]


def measure(store, size: int, runs: int) -> tuple[float, float]:
    """(best MB/s over ``runs``, peak traced MB of one more run)."""
    store.put_stream("bench/warmup.bin", GeneratedStream(64 * 1024), "application/octet-stream")
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        written = store.put_stream("bench/object.bin", GeneratedStream(size), "application/octet-stream")
        best = min(best, time.perf_counter() - start)
        assert written == size, (written, size)
    tracemalloc.start()
    try:
        store.put_stream("bench/object.bin", GeneratedStream(size), "application/octet-stream")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert store.head("bench/object.bin")["bytes"] == size
    store.delete("bench/object.bin")
    store.delete("bench/warmup.bin")
    return size / MB / best, peak / MB


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=50, help="object size in MB (default 50)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per store; the best counts (default 3)")
    args = parser.parse_args(argv)
    size = args.mb * MB

    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        local = LocalStore(os.path.join(tmp, "local"), "http://127.0.0.1:8000", "bench-secret-0123456789")
        rate, peak = measure(local, size, args.runs)
        print(f"local put_stream {args.mb}MB: {rate:.0f} MB/s, peak {peak:.1f} MB")

        with start_s3rver(os.path.join(tmp, "s3rver"), "bench") as server:
            os.environ["AWS_ACCESS_KEY_ID"] = server.access_key
            os.environ["AWS_SECRET_ACCESS_KEY"] = server.secret_key
            s3 = S3Store(make_s3_client(server.endpoint_url, server.region), server.bucket, "bench")
            rate, peak = measure(s3, size, args.runs)
            print(f"s3rver put_stream {args.mb}MB: {rate:.0f} MB/s, peak {peak:.1f} MB "
                  f"(multipart, {s3.part_size // MB} MB parts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
