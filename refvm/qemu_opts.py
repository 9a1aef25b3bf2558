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
