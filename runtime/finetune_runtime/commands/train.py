"""`finetune train` (not wired yet: its owner replaces this module)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    subparsers.add_parser("train", help="(not available yet)")
