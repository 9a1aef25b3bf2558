"""QemuOpts spelling shared by every option parser: `a=b,c=d`, where `,,` stands for a literal comma."""

from __future__ import annotations


def split_opts(text: str) -> list[str]:
    """Split on ',' keeping ',,' as a literal comma (so paths with commas survive, as in QEMU)."""
    parts, cur, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == ",":
            if text[i + 1 : i + 2] == ",":
                cur.append(",")
                i += 2
                continue
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def parse_opts(text: str, first_key: str | None = None) -> dict[str, str]:
    """QemuOpts `a=b,c=d` into a dict: an unnamed first item goes to ``first_key``, any other bare ``flag``
    means ``flag=on`` (QEMU's shorthand, e.g. ``server,nowait``); a later duplicate wins, as in QEMU."""
    out: dict[str, str] = {}
    for i, item in enumerate(split_opts(text)):
        key, eq, value = item.partition("=")
        if item and not eq:
            key, value = (first_key, item) if i == 0 and first_key else (item, "on")
        if item:
            out[key] = value
    return out
