"""``diffmamba keys``: create, revoke and list the API keys of ``DIFFMAMBA_API_KEYS_FILE``.

``create`` prints the new key once, on stdout alone (``KEY=$(diffmamba keys create ...)``);
the file keeps only its SHA-256 (see ``service.auth.keys``). A running server picks up every
change at its next request, without a restart.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from service.cli.common import fail, positive_float, positive_int

ENV_FILE = "DIFFMAMBA_API_KEYS_FILE"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="manage API keys (create, revoke, list)")
    actions = p.add_subparsers(dest="keys_action", required=True, metavar="ACTION")

    def with_file(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--file", type=Path, default=os.environ.get(ENV_FILE) or None,
                            help=f"the keys file ({ENV_FILE})")

    create = actions.add_parser("create", help="add a key and print it (shown only once)")
    with_file(create)
    create.add_argument("--name", required=True, help="who or what uses the key (unique)")
    create.add_argument("--rate", type=positive_float, default=None,
                        help="requests per second (default: DIFFMAMBA_RATE_LIMIT_PER_S)")
    create.add_argument("--burst", type=positive_int, default=None,
                        help="requests at once (default: DIFFMAMBA_RATE_LIMIT_BURST)")
    create.add_argument("--concurrency", type=positive_int, default=None,
                        help="requests in progress (default: DIFFMAMBA_MAX_CONCURRENT_PER_KEY)")
    create.add_argument("--tasks", default=None,
                        help="comma-separated tasks the key may use (default: all)")
    revoke = actions.add_parser("revoke", help="remove a key; servers refuse it at once")
    with_file(revoke)
    revoke.add_argument("--name", required=True)
    listing = actions.add_parser("list", help="the keys' names, limits and dates (no secrets)")
    with_file(listing)
    listing.add_argument("--json", action="store_true", help="print the records as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from service.auth import KeyFileError, create_key, read_keys_file, revoke_key

    if args.file is None:
        return fail(f"no keys file: pass --file or set {ENV_FILE}")
    path: Path = args.file
    try:
        if args.keys_action == "create":
            tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
            key, record = create_key(path, args.name, rate_per_s=args.rate, burst=args.burst,
                                     max_concurrent=args.concurrency, tasks=tasks)
            print(key)
            print(f"created key {record.name!r} in {path}; it is shown only this once",
                  file=sys.stderr)
        elif args.keys_action == "revoke":
            record = revoke_key(path, args.name)
            print(f"revoked key {record.name!r} in {path}", file=sys.stderr)
        else:
            records = read_keys_file(path)
            if args.json:
                print(json.dumps([{k: v for k, v in r.to_json().items() if k != "sha256"}
                                  for r in records], indent=2))
            else:
                _print_table(records)
    except KeyFileError as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"cannot write {path}: {exc.strerror or exc}")
    return 0


def _print_table(records: list) -> None:
    if not records:
        print("no keys")
        return
    rows = [("NAME", "CREATED", "RATE/S", "BURST", "CONCURRENT", "TASKS")]
    for r in records:
        rows.append((r.name, r.created, _or_default(r.rate_per_s), _or_default(r.burst),
                     _or_default(r.max_concurrent), ",".join(r.tasks) if r.tasks else "all"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _or_default(value: float | int | None) -> str:
    return "default" if value is None else f"{value:g}"
