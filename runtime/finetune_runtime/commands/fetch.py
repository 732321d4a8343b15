"""`finetune fetch URI DEST`: S3 object or prefix → local (or back, with --upload)."""

from __future__ import annotations

import argparse
import sys

from finetune_runtime.errors import FetchError
from finetune_runtime.storage.fetch import fetch_detailed
from finetune_runtime.storage.redact import redact
from finetune_runtime.storage.s3 import ADDRESSING_STYLES, S3Options
from finetune_runtime.storage.transfer import MiB, TransferSettings
from finetune_runtime.storage.upload import upload


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


def add_fetch_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `finetune fetch URI DEST [--endpoint-url U] [--region R] [--upload]`."""
    parser.add_argument(
        "uri", metavar="URI", help="s3://BUCKET/KEY (a file) or s3://BUCKET/PREFIX/"
    )
    parser.add_argument("dest", metavar="DEST", help="local file or directory")
    parser.add_argument(
        "--endpoint-url",
        help="S3-compatible endpoint (MinIO, Ceph); default $AWS_ENDPOINT_URL or AWS",
    )
    parser.add_argument("--region", help="bucket region; default $AWS_REGION / boto3's config")
    parser.add_argument(
        "--upload",
        action="store_true",
        help="the other way round: upload DEST (a file or directory) to URI",
    )
    parser.add_argument(
        "--addressing-style",
        choices=ADDRESSING_STYLES,
        help="bucket addressing; default path-style with a custom endpoint, else auto",
    )
    parser.add_argument(
        "--path-style",
        dest="addressing_style",
        action="store_const",
        const="path",
        help="same as --addressing-style path",
    )
    parser.add_argument(
        "--no-sign-request", action="store_true", help="anonymous access to a public bucket"
    )
    parser.add_argument(
        "--max-attempts", type=int, help="attempts per request (botocore retries, default 5)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=TransferSettings.max_concurrency,
        help="parallel requests",
    )
    parser.add_argument(
        "--chunk-size-mb",
        type=int,
        default=TransferSettings.multipart_chunksize // MiB,
        help="multipart part size in MiB",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_fetch(args: argparse.Namespace) -> int:
    """Run `finetune fetch` from parsed arguments; prints the result, returns the exit code."""
    options = S3Options(
        endpoint_url=args.endpoint_url,
        region=args.region,
        addressing_style=args.addressing_style,
        anonymous=args.no_sign_request,
        max_attempts=args.max_attempts,
    )
    chunk = max(5, args.chunk_size_mb) * MiB
    transfer = TransferSettings(
        multipart_threshold=max(chunk, TransferSettings.multipart_threshold),
        multipart_chunksize=chunk,
        max_concurrency=max(1, args.concurrency),
    )
    show = False if args.no_progress else None
    try:
        if args.upload:
            up = upload(args.dest, args.uri, options=options, transfer=transfer, show_progress=show)
            print(
                f"uploaded {len(up.uploaded)} file(s), {len(up.unchanged)} unchanged → {up.uri}",
                file=sys.stderr,
            )
            print(up.uri)
        else:
            rep = fetch_detailed(
                args.uri, args.dest, options=options, transfer=transfer, show_progress=show
            )
            print(
                f"fetched {len(rep.downloaded)} object(s) ({_human(rep.bytes_downloaded)}), "
                f"{len(rep.cached)} cached, {len(rep.removed)} removed → {rep.path}",
                file=sys.stderr,
            )
            print(rep.path)
    except FetchError as exc:
        print(f"finetune fetch: error: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    return 0


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
