"""Writes docs/config.md, the reference of every config key: its default and what it does.

    python tools/config_reference.py            # (re)write docs/config.md
    python tools/config_reference.py --check    # exit 1 if docs/config.md is stale

Everything in the page comes from the code, so it cannot drift (tests/test_config_reference.py
fails when the page differs from what this writes):

- the defaults are those a config file starts from: `align_jax.config.base_config()` (the
  keys every stage shares, listed once), then each registered objective's `defaults()`
  (`config.objective`) and `sections()` (online RL's `rollout` and `rewards`), as
  `align_jax.objectives.config_for(name)` assembles them; where an objective's config
  changes a shared default, its section says so;
- each key's one-line description is the comment where its default is assigned, read with
  `ast` and `tokenize` from the functions that build those configs (and the functions they
  call): the trailing `# ...` on the key's line, else the comment lines directly above it,
  joined (cut to their first sentences when long). A key without one is an error: this
  prints the keys and writes nothing.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import functools
import inspect
import io
import json
import os
import re
import sys
import tokenize
from collections.abc import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import ml_collections  # noqa: E402

from align_jax import config as config_module  # noqa: E402
from align_jax import objectives  # noqa: E402
from align_jax.objectives.base import REGISTRY  # noqa: E402

OUT = os.path.join(REPO, "docs", "config.md")
# Objectives in the order of the stages that hand off to each other; others follow by name.
ORDER = (
    "pretrain", "sft", "reward", "dpo", "kto", "listwise", "simpo", "cpo", "orpo", "grpo",
    "ppo", "online_dpo",
)  # fmt: skip
# The shared keys' groups: (title, top-level sections); top-level values are "Run".
GROUPS = (
    ("Mesh and sharding", ("mesh", "sharding")),
    ("Model", ("model",)),
    ("Optimizer", ("optimizer",)),
    ("Data", ("data",)),
)
# Modules whose functions a config-building function calls are followed into, for comments.
FOLLOW = ("align_jax",)
MAX_DESCRIPTION = 200  # characters; a longer comment is cut to its first sentences
_PRAGMA = re.compile(r"^(fmt:|noqa\b|type:|pragma\b|ruff:|pylint:)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`(])")

Key = tuple[str, ...]


# ----------------------------------------------------------------------------- comments


@functools.cache
def _module_source(path: str) -> tuple[ast.Module, dict[int, str], dict[int, str]]:
    """(the module's AST, trailing comments by line, comment-only lines by line)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    trailing, alone = {}, {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            line = tok.start[0]
            body = tok.string.lstrip("#").strip()
            (trailing if line in code_lines else alone)[line] = body
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    return ast.parse(text, path), trailing, alone


def _shorten(text: str) -> str:
    """One line: the whole comment, or its leading sentences up to MAX_DESCRIPTION characters
    (at least the first)."""
    text = " ".join(text.split())
    if len(text) <= MAX_DESCRIPTION:
        return text
    sentences = _SENTENCE_END.split(text)
    out = sentences[0]
    for sentence in sentences[1:]:
        if len(out) + 1 + len(sentence) > MAX_DESCRIPTION:
            break
        out += " " + sentence
    return out


def _comment(path: str, first: int, last: int) -> str:
    """The comment of a key written on lines first..last: the trailing comment of its first
    (else its last) line, else the comment-only lines directly above it, joined."""
    _, trailing, alone = _module_source(path)
    for line in (first, last):
        text = trailing.get(line, "")
        if text and not _PRAGMA.match(text):
            return _shorten(text)
    above = []
    line = first - 1
    while line in alone:
        if not _PRAGMA.match(alone[line]):
            above.insert(0, alone[line])
        line -= 1
    return _shorten(" ".join(above))


def _function_node(func) -> ast.FunctionDef:
    tree, _, _ = _module_source(inspect.getsourcefile(func))
    line = func.__code__.co_firstlineno
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == func.__name__:
            if line in (node.lineno, *(d.lineno for d in node.decorator_list)):
                return node
    raise LookupError(f"no source for {func.__module__}.{func.__qualname__}")


def _attribute_chain(node) -> Key | None:
    """`c.data.seq_len` -> ("data", "seq_len"): the attributes below the root variable."""
    chain: list[str] = []
    while isinstance(node, ast.Attribute):
        chain.insert(0, node.attr)
        node = node.value
    return tuple(chain) if isinstance(node, ast.Name) else None


class _Comments:
    """Key -> description, from the statements of a function that builds a config and of the
    align_jax functions it calls to build parts of it."""

    def __init__(self):
        self.sites: dict[Key, list[tuple[str, int, int]]] = {}  # key -> (file, first, last)
        self.seen: set[tuple[int, Key]] = set()

    def found(self) -> dict[Key, str]:
        """Each key's first comment. A line that assigns several keys documents none of
        them: its comments cannot say which key they describe."""
        per_line: dict[tuple[str, int], int] = {}
        for sites in self.sites.values():
            for path, first, _ in sites:
                per_line[(path, first)] = per_line.get((path, first), 0) + 1
        out = {}
        for key, sites in self.sites.items():
            texts = [_comment(p, a, b) for p, a, b in sites if per_line[(p, a)] == 1]
            out[key] = next((t for t in texts if t), "")
        return out

    def function(self, func: Callable, prefix: Key) -> None:
        if (id(func), prefix) in self.seen:
            return
        self.seen.add((id(func), prefix))
        node = _function_node(func)
        self._statements(node.body, func, prefix)

    def _record(self, key: Key, path: str, first: int, last: int) -> None:
        self.sites.setdefault(key, []).append((path, first, last))

    def _statements(self, body, func, prefix: Key) -> None:
        path = inspect.getsourcefile(func)
        for stmt in body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                chain = _attribute_chain(stmt.targets[0])
                if chain:
                    key = prefix + chain
                    self._record(key, path, stmt.lineno, stmt.end_lineno)
                    self._value(stmt.value, func, key)
            elif isinstance(stmt, ast.Return) and stmt.value is not None:
                self._value(stmt.value, func, prefix)
            elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
                call = stmt.value
                if isinstance(call.func, ast.Attribute) and call.func.attr == "update":
                    chain = _attribute_chain(call.func.value)
                    if chain is not None:
                        for arg in call.args:
                            self._value(arg, func, prefix + chain)
                        self._keywords(call.keywords, func, prefix + chain)
            elif isinstance(stmt, (ast.If, ast.With, ast.For)):
                self._statements(stmt.body, func, prefix)
                self._statements(getattr(stmt, "orelse", []), func, prefix)

    def _keywords(self, keywords, func, prefix: Key) -> None:
        path = inspect.getsourcefile(func)
        for kw in keywords:
            if kw.arg is None:
                self._value(kw.value, func, prefix)
            else:
                self._record(prefix + (kw.arg,), path, kw.lineno, kw.end_lineno)
                self._value(kw.value, func, prefix + (kw.arg,))

    def _value(self, node, func, key: Key) -> None:
        path = inspect.getsourcefile(func)
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if k is None:  # **other_function()
                    self._value(v, func, key)
                elif isinstance(k, ast.Constant) and isinstance(k.value, str):
                    self._record(key + (k.value,), path, k.lineno, v.end_lineno)
                    self._value(v, func, key + (k.value,))
        elif isinstance(node, ast.Call):
            target = self._resolve(node.func, func)
            if target is ml_collections.ConfigDict or target is dict:
                for arg in node.args:
                    self._value(arg, func, key)
                self._keywords(node.keywords, func, key)
            elif inspect.isfunction(target) and target.__module__.startswith(FOLLOW):
                self.function(target, key)

    @staticmethod
    def _resolve(node, func):
        """The object a call's function expression names, in `func`'s module."""
        if isinstance(node, ast.Name):
            return func.__globals__.get(node.id, getattr(builtins, node.id, None))
        if isinstance(node, ast.Attribute):
            owner = _Comments._resolve(node.value, func)
            return getattr(owner, node.attr, None)
        return None


def descriptions(func: Callable, prefix: Key = ()) -> dict[Key, str]:
    """Key -> its comment, for the config `func()` builds (keys under `prefix`)."""
    comments = _Comments()
    comments.function(func, prefix)
    return comments.found()


# ----------------------------------------------------------------------------- the model


def flatten(config, prefix: Key = ()) -> dict[Key, object]:
    """Leaf key -> value (ConfigDict lists keys sorted)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.update(flatten(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def _documented(config, docs: dict[Key, str], prefix: Key = ()) -> dict[Key, tuple]:
    """Leaf key -> (default, description), in the order the source assigns the keys (keys it
    does not name last, sorted)."""
    flat = flatten(config, prefix)
    order = {key: i for i, key in enumerate(docs)}
    keys = sorted(flat, key=lambda k: (order.get(k, len(order)), k))
    return {k: (flat[k], docs.get(k, "")) for k in keys}


def objective_names() -> list[str]:
    names = objectives.names()
    return [n for n in ORDER if n in names] + sorted(set(names) - set(ORDER))


def reference() -> dict:
    """What the page shows: the shared keys; per objective its own keys, its other top-level
    sections (online RL's `rollout`, `rewards`) and the shared defaults its config changes.
    Keys map to (default, description); changed ones to (default, shared default,
    description)."""
    base = config_module.base_config()
    shared = _documented(base, descriptions(config_module.base_config))
    per_objective = {}
    for name in objective_names():
        reg = REGISTRY[name]
        own_docs = descriptions(reg.defaults, ("objective",))
        own = _documented(objectives.defaults(name), own_docs, ("objective",))
        full = objectives.config_for(name)
        sections, changed = {}, {}
        if reg.sections is not None:
            section_docs = descriptions(reg.sections)
            for section in reg.sections():
                if section not in base:
                    sections[section] = _documented(full[section], section_docs, (section,))
                else:  # a shared section replaced: its keys' defaults and descriptions
                    for k, (v, d) in _documented(full[section], section_docs, (section,)).items():
                        if k not in shared or shared[k][0] != v:
                            old, old_doc = shared.get(k, ("(none)", ""))
                            changed[k] = (v, old, d or old_doc)
        flat = flatten(full)
        for k, (v, d) in shared.items():  # changed some other way than by a section
            if k not in changed and flat.get(k, v) != v:
                changed[k] = (flat[k], v, d)
        per_objective[name] = {"keys": own, "sections": sections, "changed": changed}
    return {"shared": shared, "objectives": per_objective}


def undocumented(ref: dict | None = None) -> list[str]:
    """Keys whose default is assigned without a comment, as `where: key`."""
    ref = ref or reference()
    missing = [f"base_config: {'.'.join(k)}" for k, (_, d) in ref["shared"].items() if not d]
    for name, obj in ref["objectives"].items():
        missing += [f"{name}: {'.'.join(k)}" for k, (_, d) in obj["keys"].items() if not d]
        for keys in obj["sections"].values():
            missing += [f"{name}: {'.'.join(k)}" for k, (_, d) in keys.items() if not d]
        missing += [f"{name}: {'.'.join(k)}" for k, (*_, d) in obj["changed"].items() if not d]
    return sorted(set(missing))


# ----------------------------------------------------------------------------- markdown


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def format_value(value) -> str:
    """A default as the code span of the page: strings JSON-quoted, the rest as Python."""
    if isinstance(value, tuple) and value == config_module.DEFAULT_RULES:
        return "`DEFAULT_RULES` (below)"
    if isinstance(value, str):
        return f"`{_cell(json.dumps(value, ensure_ascii=False))}`"
    return f"`{_cell(repr(value))}`"


def _table(rows, header=("key", "default", "what it does")) -> list[str]:
    lines = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return lines + [""]


def _key_rows(keys: dict) -> list[tuple[str, ...]]:
    return [(f"`{'.'.join(k)}`", format_value(v), _cell(d)) for k, (v, d) in keys.items()]


def _summary(module_name: str) -> str:
    """The first sentence of a module's docstring."""
    doc = inspect.getdoc(sys.modules[module_name]) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    return _SENTENCE_END.split(first)[0]


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


INTRO = """\
# Config reference

<!-- Generated by tools/config_reference.py from the code; do not edit. After changing a
default or its comment, run `python tools/config_reference.py`:
tests/test_config_reference.py fails while this page is stale. -->

Every key of a run's config, with the default it starts from and what it does. A stage's
config is a Python file, `configs/<stage>/<name>.py`, whose `get_config(arg=None)` starts
from `align_jax.objectives.config_for("<objective>")`: the keys every stage shares
(`align_jax.config.base_config()`, listed once below), plus that objective's own
`config.objective` keys and, for online RL, its `rollout` and `rewards` sections. The file
then sets what differs (the values here are the library's defaults, not those of any config
file), and usually takes its model shape from a named preset,
`align_jax.config.model_config("tiny")` (below). The command line locks the config and then
applies overrides in order, each parsed as the type of the default it replaces:

    python -m align_jax.train --config=configs/dpo/tiny.py --workdir=runs/dpo \\
        --config.objective.beta=0.2 --config.data.seq_len=1024 --config.model.remat=full

A bare boolean flag (`--config.data.shuffle`) sets True; a key the config does not hold is
an error naming the closest one, so `config.objective` accepts only its objective's keys.
"""


def render(ref: dict | None = None) -> str:
    """docs/config.md."""
    ref = ref or reference()
    shared = ref["shared"]
    online = {n: o for n, o in ref["objectives"].items() if o["sections"]}
    lines = [INTRO]

    grouped: list[tuple[str, dict]] = [("Run", {k: v for k, v in shared.items() if len(k) == 1})]
    sections_seen = {name for _, names in GROUPS for name in names}
    grouped += [(title, {k: v for k, v in shared.items() if k[0] in names and len(k) > 1})
                for title, names in GROUPS]  # fmt: skip
    for section in dict.fromkeys(k[0] for k in shared if len(k) > 1):
        if section not in sections_seen:
            grouped.append((f"`{section}`", {k: v for k, v in shared.items() if k[0] == section}))

    section_names = list(dict.fromkeys(s for o in online.values() for s in o["sections"]))
    lines += ["## Contents", ""]
    lines.append("- [Shared keys](#shared-keys): " + ", ".join(
        f"[{title.strip('`')}](#{_anchor(title)})" for title, _ in grouped))  # fmt: skip
    lines.append("- [Objectives](#objectives): " + ", ".join(
        f"[{n}](#{_anchor(n)})" for n in ref["objectives"]))  # fmt: skip
    if section_names:
        lines.append("- [Objective sections](#objective-sections): " + ", ".join(
            f"[{s}](#{_anchor(s)})" for s in section_names))  # fmt: skip
    lines += ["", "## Shared keys", "", "Every stage's config holds these.", ""]

    for title, keys in grouped:
        lines += [f"### {title}", ""]
        lines += _table(_key_rows(keys))
        if title == "Mesh and sharding":
            lines += [
                "`DEFAULT_RULES` (align_jax/config.py), logical axis to mesh axes; a mesh axis"
                " serves at most one logical axis per array, and only where it divides it:",
                "",
            ]
            rules = [(f"`{axis}`", ", ".join(f"`{a}`" for a in _axes(mesh)) or "replicated")
                     for axis, mesh in config_module.DEFAULT_RULES]  # fmt: skip
            lines += _table(rules, header=("logical axis", "mesh axes"))
        if title == "Model":
            lines += [
                "Presets (`align_jax.config.MODEL_PRESETS`): `model_config(preset)` is these "
                "defaults with the preset's fields:",
                "",
            ]
            presets = [(f"`{name}`", _cell(_preset_fields(fields)))
                       for name, fields in config_module.MODEL_PRESETS.items()]  # fmt: skip
            lines += _table(presets, header=("preset", "fields it sets"))

    lines += [
        "## Objectives",
        "",
        "`config.objective` holds the keys of one objective, the one `objective.name` names:",
        "",
    ]
    for name, obj in ref["objectives"].items():
        reg = REGISTRY[name]
        lines += [f"### {name}", ""]
        about = _summary(reg.builder.__module__)
        module = reg.builder.__module__.replace(".", "/") + ".py"
        lines += [f"{about} Source: {module}.", ""]
        if reg.loss_types is not None:
            lines += ["Loss types: " + ", ".join(f"`{t}`" for t in reg.loss_types) + ".", ""]
        lines += _table(_key_rows(obj["keys"]))
        if obj["sections"]:
            links = ", ".join(f"[`{s}`](#{_anchor(s)})" for s in obj["sections"])
            lines += [f"Its config also holds the sections {links}.", ""]
        if obj["changed"]:
            lines += ["Shared defaults its config changes:", ""]
            rows = [(f"`{'.'.join(k)}`", format_value(v), format_value(b), _cell(d))
                    for k, (v, b, d) in obj["changed"].items()]  # fmt: skip
            lines += _table(rows, header=("key", "default", "shared default", "what it does"))

    if section_names:
        lines += [
            "## Objective sections",
            "",
            "Top-level sections that only some objectives' configs hold.",
            "",
        ]
    for section in section_names:
        variants: list[tuple[list[str], dict]] = []
        for name, obj in online.items():
            keys = obj["sections"].get(section)
            if keys is None:
                continue
            for names, same in variants:
                if same == keys:
                    names.append(name)
                    break
            else:
                variants.append(([name], keys))
        lines += [f"### {section}", ""]
        for names, keys in variants:
            lines += [f"In the configs of {', '.join(f'`{n}`' for n in names)}:", ""]
            lines += _table(_key_rows(keys))
    return "\n".join(lines).rstrip("\n") + "\n"


def _axes(mesh) -> tuple[str, ...]:
    if mesh is None:
        return ()
    return (mesh,) if isinstance(mesh, str) else tuple(mesh)


def _preset_fields(fields: dict) -> str:
    parts = []
    for key, value in fields.items():
        if isinstance(value, dict):
            parts += [f"`{key}.{k}={v!r}`" for k, v in value.items()]
        else:
            parts.append(f"`{key}={value!r}`")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    ref = reference()
    missing = undocumented(ref)
    if missing:
        print(
            f"error: {len(missing)} config keys have no comment where their default is "
            "assigned (add a trailing `# ...` or a comment line above it):",
            file=sys.stderr,
        )
        for key in missing:
            print(f"  {key}", file=sys.stderr)
        return 1
    text = render(ref)
    rel = os.path.relpath(OUT, REPO)
    if args.check:
        with open(OUT, encoding="utf-8") as f:
            if f.read() != text:
                print(f"error: {rel} is stale; run `python tools/config_reference.py`")
                return 1
        print(f"{rel} is up to date")
        return 0
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {rel}: {sum(1 for line in text.splitlines() if line.startswith('| `'))} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
