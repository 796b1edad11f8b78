"""What every command line shares: flags, config files, `--config.key=value` overrides, and
bad input reported as one line on stderr (`error: ...`, exit status 2), never a traceback.

    parser = cli.ArgumentParser(prog="python -m align_jax.train", description=...)
    cli.add_config_flag(parser)
    parser.add_argument("--workdir", required=True)
    try:
        args, config = cli.parse_with_config(parser, argv)
    except cli.UsageError as e:
        return cli.report(e)

A config file is `path[:arg]`: the file's `get_config(arg)` (arg None without `:`) returns a
ConfigDict, which is locked before the overrides apply, so an override can change a value
but never add a key. A file inside a package (`configs/` is one) is imported under its
package name, `configs.dpo.tiny`, from wherever the command runs, so configs import each
other plainly (`from configs.dpo.tiny import get_config`): the package's top folder is
loaded from its own location (its parent folder need not be on sys.path).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import glob
import importlib
import importlib.util
import inspect
import os
import sys
import traceback

import ml_collections

CONFIG_FLAG = "config"
_TRUE, _FALSE = ("true", "t", "yes", "y", "1"), ("false", "f", "no", "n", "0")


class UsageError(Exception):
    """Bad flags or config: the message is the whole report, one line."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors raise UsageError (one line) instead of printing usage and exiting;
    `--help` still prints the usage."""

    def error(self, message):
        raise UsageError(f"{message} (`{self.prog} --help` lists the flags)")


def report(error: Exception) -> int:
    """Prints `error: <message>` on stderr; returns the exit status of a usage error."""
    print(f"error: {error}", file=sys.stderr)
    return 2


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        f"--{CONFIG_FLAG}",
        required=True,
        metavar="FILE[:ARG]",
        help="config file, e.g. configs/pretrain/tiny.py; ':ARG' is passed to its "
        f"get_config(arg). Override any key with --{CONFIG_FLAG}.KEY=VALUE (repeatable).",
    )


def parse_with_config(parser: argparse.ArgumentParser, argv=None):
    """(args, config): the parser's flags, and the locked config of `--config` with every
    `--config.KEY=VALUE` (or `--config.KEY VALUE`; a bare `--config.KEY` sets a bool True)
    applied in order."""
    argv = sys.argv[1:] if argv is None else list(argv)
    rest, overrides = split_overrides(argv)
    args = parser.parse_args(rest)
    config = load_config(getattr(args, CONFIG_FLAG))
    for key, raw in overrides:
        set_override(config, key, raw)
    return args, config


def split_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str | None]]]:
    """(the other arguments, [(key, raw value or None)]) of the `--config.KEY` arguments."""
    prefix = f"--{CONFIG_FLAG}."
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith(prefix):
            rest.append(arg)
            continue
        key, eq, raw = arg[len(prefix) :].partition("=")
        if not eq:
            raw = None
            if i < len(argv) and not argv[i].startswith("--"):
                raw, i = argv[i], i + 1
        overrides.append((key, raw))
    return rest, overrides


# ------------------------------------------------------------------------- config files


def load_config(spec: str) -> ml_collections.ConfigDict:
    """The locked ConfigDict of a config file `path[:arg]`; UsageError naming the file (and
    line) when the file is missing or broken."""
    path, colon, arg = (spec or "").partition(":")
    args = (arg,) if colon else ()
    if not path:
        raise UsageError(
            f"--{CONFIG_FLAG} is empty; expected a config file, e.g. configs/pretrain/tiny.py"
        )
    if not os.path.isfile(path):
        raise UsageError(f"config file '{path}' does not exist{_did_you_mean_file(path)}")
    if not path.endswith(".py"):
        raise UsageError(f"config file '{path}' is not a Python file (.py with get_config)")
    module = _guarded(path, "importing it", lambda: _import(path))
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise UsageError(
            f"{path}: defines no get_config(arg=None); a config file returns its "
            "ml_collections.ConfigDict from it"
        )
    try:
        inspect.signature(get_config).bind(*args)
    except TypeError:
        given = f"the argument ':{arg}'" if colon else "no argument"
        raise UsageError(
            f"{path}: get_config{inspect.signature(get_config)} cannot be called with {given}"
        ) from None
    config = _guarded(path, f"get_config({', '.join(map(repr, args))})", lambda: get_config(*args))
    if not isinstance(config, ml_collections.ConfigDict):
        raise UsageError(
            f"{path}: get_config returned {type(config).__name__}; expected an "
            "ml_collections.ConfigDict"
        )
    config.lock()
    return config


def _package_parts(path: str) -> tuple[str, list[str]]:
    """(the folder the file's outermost package lies in, the module name's parts)."""
    path = os.path.abspath(path)
    parts = [os.path.splitext(os.path.basename(path))[0]]
    folder = os.path.dirname(path)
    while os.path.isfile(os.path.join(folder, "__init__.py")):
        parts.insert(0, os.path.basename(folder))
        folder = os.path.dirname(folder)
    return folder, parts


def _import(path: str):
    """The module of the file `path`, imported by its package name when it lies in one."""
    folder, parts = _package_parts(path)
    if len(parts) == 1:
        spec = importlib.util.spec_from_file_location("align_jax_config_file", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    top, top_dir = parts[0], os.path.join(folder, parts[0])
    loaded = sys.modules.get(top)
    if loaded is None:
        spec = importlib.util.spec_from_file_location(
            top, os.path.join(top_dir, "__init__.py"), submodule_search_locations=[top_dir]
        )
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[top] = loaded
        try:
            spec.loader.exec_module(loaded)
        except BaseException:
            del sys.modules[top]
            raise
    elif os.path.realpath(list(loaded.__path__)[0]) != os.path.realpath(top_dir):
        raise UsageError(
            f"{path}: a different '{top}' package ({list(loaded.__path__)[0]}) is already "
            "imported in this process"
        )
    return importlib.import_module(".".join(parts))


def _guarded(path: str, doing: str, fn):
    """fn(), with any exception turned into a UsageError naming the place in the config
    files that raised it."""
    try:
        return fn()
    except UsageError:
        raise
    except SyntaxError as e:
        raise UsageError(f"{_shown(e.filename)}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:  # a config file can raise anything; report where, in one line
        where = _shown(path)
        folder, parts = _package_parts(path)
        # Frames in the config file, or anywhere in its package (a base config it imports).
        inside = os.path.join(folder, parts[0], "") if len(parts) > 1 else os.path.abspath(path)
        for frame in traceback.extract_tb(e.__traceback__):
            if os.path.abspath(frame.filename).startswith(inside):
                where = f"{_shown(frame.filename)}:{frame.lineno}"
        raise UsageError(f"{where}: {doing} raised {type(e).__name__}: {e}") from None


def _shown(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _did_you_mean_file(path: str) -> str:
    folder = os.path.dirname(path)
    pattern = os.path.join(folder, "*.py") if os.path.isdir(folder or ".") else "configs/*/*.py"
    close = difflib.get_close_matches(path, sorted(glob.glob(pattern)), n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(close)}?" if close else ""


# ----------------------------------------------------------------------------- overrides


def set_override(
    config: ml_collections.ConfigDict, key: str, raw: str | None, flag: str | None = None
) -> None:
    """Sets `config.<key>` from the command-line text `raw` (None: a bare flag), parsed as the
    type of the value it replaces; UsageError for an unknown key or a value of the wrong type,
    naming `flag` (default `--config.<key>`)."""
    flag = flag or f"--{CONFIG_FLAG}.{key}"
    node, parts = config, key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise UsageError(_unknown_key(config, parts, depth, flag))
        if depth < len(parts) - 1:
            node = node[part]
    current = node[parts[-1]]
    if isinstance(current, ml_collections.ConfigDict):
        raise UsageError(
            f"{flag} is a group of keys, not a value; set one of them: "
            f"{', '.join(f'{key}.{k}' for k in current)}"
        )
    node[parts[-1]] = _parse_value(flag, raw, current)


def _unknown_key(config, parts: list[str], depth: int, flag: str) -> str:
    key = ".".join(parts)
    group = ".".join(parts[:depth])
    node = config
    for part in parts[:depth]:
        node = node[part]
    siblings = list(node) if isinstance(node, ml_collections.ConfigDict) else []
    close = difflib.get_close_matches(key, sorted(_flat_keys(config)), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    where = f"config.{group}" if group else "the config"
    if not isinstance(node, ml_collections.ConfigDict):
        return f"{flag}: config.{group} is a value, not a group of keys{hint}"
    return f"{flag}: unknown config key '{key}'{hint} (keys of {where}: {', '.join(siblings)})"


def _flat_keys(config, prefix: str = ""):
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict):
            yield from _flat_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def _parse_value(flag: str, raw: str | None, current):
    kind = type(current)
    if raw is None and kind is not bool:
        raise UsageError(f"{flag} needs a value: {flag}=VALUE (a {kind.__name__})")
    try:
        if kind is bool:
            text = "true" if raw is None else raw.strip().lower()
            if text not in _TRUE + _FALSE:
                raise ValueError
            return text in _TRUE
        if kind in (int, float):
            return kind(raw)
        if kind is str:
            return raw
        if current is None:  # no type to go by: a Python literal, else the text itself
            try:
                return ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                return raw
        if kind in (tuple, list):
            value = ast.literal_eval(raw)
            if not isinstance(value, (tuple, list)):
                raise ValueError
            return kind(value)
    except (ValueError, SyntaxError):
        expected = {
            bool: "true or false",
            int: "an integer",
            float: "a number",
            tuple: "a Python tuple literal",
            list: "a Python list literal",
        }
        now = f" (now {current!r})" if kind in (bool, int, float) else ""
        raise UsageError(
            f"{flag}: expected {expected.get(kind, 'a Python literal')}, got {raw!r}{now}"
        ) from None
    raise UsageError(f"{flag}: a {kind.__name__} value cannot be set from the command line")
