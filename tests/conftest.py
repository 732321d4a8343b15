"""Shared by every suite: tests/ on sys.path (the helpers beside this file and the
kubeharness package) and the real-control-plane fixtures (started only when a test asks)."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from kubeharness.fixtures import (  # noqa: E402,F401  (fixtures, registered by import)
    cluster,
    kube,
    kube_namespace,
    kube_tools,
    node,
    operator_identity,
    operator_kubeconfig,
)
