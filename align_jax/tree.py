"""Nested-dict parameter trees <-> flat `{path tuple: leaf}` dicts.

Checkpoints, Hugging Face interop and model building all name a parameter by its path
(`("layers", "attn", "q")`); these two helpers are the one conversion between the forms.
"""

from __future__ import annotations


def flatten(tree, prefix: tuple = ()) -> dict:
    """`{"a": {"b": x}}` -> `{("a", "b"): x}`; keys become strings, leaves stay as they are."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(flatten(v, (*prefix, str(k))))
        return out
    return {prefix: tree}


def nest(flat: dict) -> dict:
    """The inverse of `flatten`: `{("a", "b"): x}` -> `{"a": {"b": x}}`."""
    out: dict = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out
