"""Prints every change under a prefix as a JSON line, from a revision on, until interrupted (or
until a key named END under the prefix is written, with --until-end). The watch moves to another
member by itself when its member fails, and resumes after the last revision it printed.

    python3 clients/python/examples/watch.py config/ --rev 1 --endpoints 127.0.0.1:7379,127.0.0.1:7479
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import latch  # noqa: E402
from latch.v1 import watch_pb2  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefix")
    parser.add_argument("--rev", type=int, default=0, help="first revision (default: from now)")
    parser.add_argument("--endpoints", default=None, help="host:port,… (default: $LATCH_ENDPOINTS)")
    parser.add_argument("--until-end", action="store_true", help="stop after the key PREFIX + 'END'")
    args = parser.parse_args()
    end = (args.prefix + "END").encode()
    with latch.Client(args.endpoints) as client, client.watch(args.prefix, prefix=True,
                                                               start_revision=args.rev) as watch:
        for batch in watch:
            for event in batch.events:
                kind = "DELETE" if event.type == watch_pb2.Event.DELETE else "PUT"
                print(json.dumps({"revision": batch.revision, "type": kind, "key": event.kv.key.decode(errors="replace"),
                                  "value": event.kv.value.decode(errors="replace")}), flush=True)
                if args.until_end and event.kv.key == end:
                    return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
