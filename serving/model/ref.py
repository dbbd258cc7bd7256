"""Which registered model version to serve: by stage, by alias or by explicit version."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

RefKind = Literal["stage", "alias", "version"]

STAGES: tuple[str, ...] = ("Production", "Staging", "Archived")

_NAME = r"[^/@\s][^/@]*"
_URI_RE = re.compile(
    rf"^models:/(?P<name>{_NAME})(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<ref>[A-Za-z0-9]+))$"
)


def canonical_stage(stage: str) -> str:
    """Return the canonical spelling of a registry stage, or raise ValueError."""
    for known in STAGES:
        if stage.strip().lower() == known.lower():
            return known
    raise ValueError(f"unknown stage {stage!r}: use one of {', '.join(STAGES)}")


@dataclass(frozen=True)
class ModelRef:
    """A reference to one registered model version, resolved against the registry later."""

    name: str
    kind: RefKind
    value: str

    @classmethod
    def from_uri(cls, uri: str) -> ModelRef:
        """Parse ``models:/name@alias``, ``models:/name/3`` or ``models:/name/Production``."""
        match = _URI_RE.match(uri.strip())
        if match is None:
            raise ValueError(
                f"model URI {uri!r} is not supported: use models:/<name>@<alias>, "
                "models:/<name>/<version> or models:/<name>/<stage>"
            )
        name = match["name"].strip()
        if match["alias"] is not None:
            return cls(name=name, kind="alias", value=match["alias"])
        ref = match["ref"]
        if ref.isdigit():
            if int(ref) < 1:
                raise ValueError(
                    f"model URI {uri!r}: versions start at 1 (models:/<name>/<version>)"
                )
            return cls(name=name, kind="version", value=str(int(ref)))
        try:
            stage = canonical_stage(ref)
        except ValueError as exc:
            raise ValueError(f"model URI {uri!r}: {exc} (models:/<name>/<stage>)") from None
        return cls(name=name, kind="stage", value=stage)

    @property
    def uri(self) -> str:
        if self.kind == "alias":
            return f"models:/{self.name}@{self.value}"
        return f"models:/{self.name}/{self.value}"

    def __str__(self) -> str:
        return self.uri
