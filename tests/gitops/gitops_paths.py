"""Paths of the GitOps integration files under test."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEALTH_LUA = REPO / "argocd" / "health.lua"
ARGOCD_CM_PATCH = REPO / "argocd" / "argocd-cm-patch.yaml"
