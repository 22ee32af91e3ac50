"""The cost of hashing the workbook as it is written (issue 18), separate from bench/export_bench.py.

Writes the same generated rows (12 columns, like the export benchmark's table) through the export's writer
twice in this process, alternating: once as shipped (every byte through SHA-256), once with the hash
replaced by a no-op, and reports the median of each and the difference, as a share of the write time.
The database fetch is left out, so the share is an upper bound of the share of a whole export's time.

    .venv/bin/python bench/checksum_bench.py --rows 1000000 --repeat 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lambdas.export_to_xlsx import checksum  # noqa: E402
from lambdas.export_to_xlsx.xlsx import XlsxStreamWriter  # noqa: E402

COLUMNS = ["id", "customer_id", "name", "email", "description", "amount", "quantity", "ordered_on",
           "shipped_at", "status", "note", "score"]


def rows(n: int):
    day = dt.date(2026, 1, 1)
    at = dt.datetime(2026, 1, 1, 8, 30)
    for i in range(n):
        yield (i, i % 5000, f"Name {i}", f"user{i}@example.com", f"Descripción {i} – ünïcödé ✓",
               Decimal(i % 100000) / 100, i % 17, day + dt.timedelta(days=i % 365),
               at + dt.timedelta(seconds=i), ("new", "paid", "shipped")[i % 3], None if i % 4 else "note", i / 7)


class _NoHash:
    def update(self, data) -> None:
        pass

    def hexdigest(self) -> str:
        return ""


def write(n: int, hashed: bool) -> tuple[float, int]:
    original = checksum.hashlib.sha256
    if not hashed:
        checksum.hashlib.sha256 = lambda: _NoHash()  # type: ignore[assignment]
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "bench.xlsx"
            started = time.perf_counter()
            writer = XlsxStreamWriter(path, sheet_name="bench", columns=COLUMNS)
            batch = []
            for row in rows(n):
                batch.append(row)
                if len(batch) == 1000:
                    writer.write_rows(batch)
                    batch.clear()
            writer.write_rows(batch)
            result = writer.close()
            seconds = time.perf_counter() - started
            if hashed:
                assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
            return seconds, result.bytes
    finally:
        checksum.hashlib.sha256 = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with_hash, without = [], []
    size = 0
    for _ in range(args.repeat):
        seconds, size = write(args.rows, hashed=True)
        with_hash.append(seconds)
        without.append(write(args.rows, hashed=False)[0])
    a, b = statistics.median(with_hash), statistics.median(without)
    started = time.perf_counter()
    hashlib.sha256(b"\0" * size).hexdigest()
    alone = time.perf_counter() - started
    print(f"rows {args.rows:,}  file {size / 2**20:.1f} MiB  runs {args.repeat}")
    print(f"write with SHA-256 {a:.2f} s (runs {', '.join(f'{s:.2f}' for s in with_hash)})")
    print(f"write without      {b:.2f} s (runs {', '.join(f'{s:.2f}' for s in without)})")
    print(f"difference {a - b:+.2f} s = {100 * (a - b) / b:+.2f}% of the write; "
          f"SHA-256 of {size / 2**20:.1f} MiB alone {alone:.3f} s = {100 * alone / b:.2f}%")


if __name__ == "__main__":
    main()
