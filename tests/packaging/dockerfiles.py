"""Parsing Dockerfiles (dockerfile-parse) by file, whatever the file is called."""

from __future__ import annotations

import io
from pathlib import Path

from dockerfile_parse import DockerfileParser


def parse_dockerfile(path: Path) -> DockerfileParser:
    """dockerfile-parse treats a `path` not named Dockerfile as a directory: pass the bytes."""
    return DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))
