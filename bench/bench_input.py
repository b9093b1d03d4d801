"""Benchmark: input-pipeline throughput (records/s) vs the raw read and decode limits.

    python bench/bench_input.py [--passes 5] [--batch 128]

On the MNIST t10k training split written as 4 TFRecord shards (as ingest writes them):

  raw read        TFRecordDataset over the shards, records counted, nothing parsed
  raw decode      + parse_single_example + decode_raw + reshape, parallel map (AUTOTUNE),
                  batched: the limit of decoding record by record (what the reader does),
                  with no shuffle/cast/cache; the ratio column is relative to this
  raw decode, vectorized   batch first, then one parse_example per batch: the fastest decode
  image_dataset   zoo.data.image_dataset as the trainer builds it per epoch (shuffle buffer
                  sized from the manifest, batch, cast to float32 [0,1], prefetch AUTOTUNE);
                  cold = first pass (reads + decodes + fills the cache), warm = later passes
                  (a new seeded pipeline per pass, as per epoch, served from the cache)

Writes bench/results/input.json and input.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import image_local_dataset, machine, md_table, quiet_tf, write_results  # noqa: E402


def _rate(make: Any, passes: int) -> list[float]:
    """records/s of each pass over a freshly made dataset."""
    import tensorflow as tf

    rates = []
    for i in range(passes):
        ds = make(i)
        t0 = time.perf_counter()
        n = 0
        for b in ds:
            n += int(tf.shape(b["image"] if isinstance(b, dict) else b)[0]) if b is not None else 0
        rates.append(n / (time.perf_counter() - t0))
    return rates


def run(passes: int, batch: int) -> dict[str, Any]:
    import tensorflow as tf

    from zoo.data import image_dataset
    from zoo.data.reader import _parse_fn

    with tempfile.TemporaryDirectory(prefix="genpipe-bench-input-") as tmp:
        data = image_local_dataset(Path(tmp))
        files = [str(p) for p in data.paths("train")]
        n = data.count("train")

        def raw_read(_: int) -> Any:
            return tf.data.TFRecordDataset(files, num_parallel_reads=4).batch(batch)

        def raw_decode(_: int) -> Any:
            ds = tf.data.TFRecordDataset(files, num_parallel_reads=4)
            ds = ds.map(_parse_fn(data.shape), num_parallel_calls=tf.data.AUTOTUNE)
            return ds.map(lambda x, y: x).batch(batch)

        def raw_decode_batched(_: int) -> Any:
            # Vectorized: parse a whole batch of records in one op (the fastest way to decode).
            feats = {
                "image": tf.io.FixedLenFeature([], tf.string),
                "label": tf.io.FixedLenFeature([], tf.int64),
            }

            def parse(records: tf.Tensor) -> tf.Tensor:
                ex = tf.io.parse_example(records, feats)
                return tf.reshape(tf.io.decode_raw(ex["image"], tf.uint8), (-1, *data.shape))

            ds = tf.data.TFRecordDataset(files, num_parallel_reads=4).batch(batch)
            return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)

        def ours(i: int) -> Any:
            return image_dataset(data, "train", batch, shuffle=True, seed=i, drop_remainder=True)

        read = _rate(raw_read, passes)
        decode = _rate(raw_decode, passes)
        decode_batched = _rate(raw_decode_batched, passes)
        ours_rates = _rate(ours, passes + 1)
    rows = [
        {"pipeline": "raw read (TFRecordDataset)", "records_per_s": statistics.median(read)},
        {
            "pipeline": "raw decode limit (parse + decode_raw)",
            "records_per_s": statistics.median(decode),
        },
        {
            "pipeline": "raw decode, vectorized (batch, then parse_example)",
            "records_per_s": statistics.median(decode_batched),
        },
        {"pipeline": "image_dataset, cold (first epoch)", "records_per_s": ours_rates[0]},
        {
            "pipeline": "image_dataset, warm (cached epochs)",
            "records_per_s": statistics.median(ours_rates[1:]),
        },
    ]
    limit = rows[1]["records_per_s"]
    for r in rows:
        r["vs_decode_limit"] = r["records_per_s"] / limit
    return {"machine": machine(), "records": n, "batch": batch, "passes": passes, "rows": rows}


def table(result: dict[str, Any]) -> str:
    body = [
        [r["pipeline"], float(r["records_per_s"]), f"{r['vs_decode_limit']:.2f}x"]
        for r in result["rows"]
    ]
    m = result["machine"]
    return md_table(["pipeline", "records/s", "vs decode limit"], body) + (
        f"\n{result['records']} MNIST records in 4 shards, batch {result['batch']}, median of "
        f"{result['passes']} passes; {m['cpus']} CPUs, load avg {m['load_avg_1m']:.1f}, {m['when']}.\n"
    )


def main(argv: list[str] | None = None) -> None:
    quiet_tf()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args(argv)
    result = run(args.passes, args.batch)
    md = table(result)
    out = write_results("input", result, md)
    print(md)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
