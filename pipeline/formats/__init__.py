"""What the stages write and read back, one module per stored output, each with one format
version: `shards` (the tar shards' manifest), `reader` (their samples, streamed), `codes` (the
codes' Parquet files and manifest) and `models` (a registered model's files and version tags).

An output of an older format is read by the one converter its module holds, or refused in one
line that says what to do; no other code knows that older formats existed.

The conditioning table every manifest and model config carries is here too: a `CondSpec` per
named input of the models.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CondSpec:
    """One conditioning input of the models: `kind` "class" (one id per sample: an ImageNet
    class, a VCTK speaker) or "sequence" (one id per step: an action per video frame), with
    `size` ids (0 .. size-1) and optional names."""
    kind: str
    size: int
    names: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"kind": self.kind, "size": self.size, "names": list(self.names)}

    @classmethod
    def from_json(cls, value: dict) -> "CondSpec":
        return cls(value["kind"], int(value["size"]), tuple(value.get("names", ())))


def cond_specs(table: dict) -> dict[str, CondSpec]:
    """A manifest's or model config's `cond` table (JSON) as CondSpecs by name."""
    return {k: CondSpec.from_json(v) for k, v in (table or {}).items()}
