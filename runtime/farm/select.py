"""Which devices a farm run uses: every one, or those named or tagged in --select."""
from __future__ import annotations

from edgesmith.errors import EdgesmithError


def matches(name: str, tags, target: str, wanted: str) -> bool:
    return wanted in (name, target) or wanted in tags


def select_devices(devices: list, wanted: list[str] | None):
    """Devices (anything with .name, .tags, .target) matching any of `wanted` (names, tags or
    target presets); all of them when `wanted` is empty. A selector matching nothing is an error."""
    if not wanted:
        return list(devices)
    out = []
    for w in wanted:
        hits = [d for d in devices if matches(d.name, d.tags, d.target, w)]
        if not hits:
            known = sorted({d.name for d in devices} | {t for d in devices for t in d.tags})
            raise EdgesmithError(f"--select {w!r} matches no device name, tag or target; known: {', '.join(known)}")
        out += [d for d in hits if d not in out]
    return out
