"""`finetune fetch URI DEST`: S3 object or prefix → local (or back, with --upload)."""

from __future__ import annotations

import argparse

from finetune_runtime.storage.fetch import add_fetch_arguments, run_fetch


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fetch",
        help="download an S3 object or prefix (cached by ETag), or upload with --upload",
        description=(
            "Download s3://BUCKET/KEY (a file) or s3://BUCKET/PREFIX/ (a tree) into DEST. "
            "Unchanged objects are not downloaded again. Credentials come from the standard "
            "AWS environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profiles, roles)."
        ),
    )
    add_fetch_arguments(parser)
    parser.set_defaults(func=run_fetch)
