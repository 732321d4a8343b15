"""Marker credentials and the leak check shared by the security tests (a uniquely named
module: `conftest` is ambiguous when several test directories have one)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Markers:
    """Credential values no code path may ever print. They are deliberately *not* shaped
    like AWS keys (no AKIA prefix), so only real redaction or non-use hides them."""

    key_id: str
    secret: str
    token: str  # a Secret's value the operator must never read (e.g. HF_TOKEN)
    inline: str  # a literal env value written into a spec (bad practice)

    def all(self) -> tuple[str, ...]:
        return (self.key_id, self.secret, self.token, self.inline)


def assert_clean(text: str, markers: Markers, where: str) -> None:
    for value in markers.all():
        assert value not in text, f"a credential marker leaked into {where}"
