"""YAML reading and Hydra-style ``key=value`` overrides, with one-line errors.

Shared by the trial config (``jobs.config``) and sweep files (``jobs.sweep_spec``); knows nothing
about which keys exist.

* Files are read with a :class:`yaml.SafeLoader` subclass that also reads exponent floats without a
  dot (``1e-3``, ``5e-5``) as floats — plain ``yaml.safe_load`` reads them as strings (YAML 1.1) —
  and refuses a key written twice in one mapping (``yaml.safe_load`` keeps the last silently):
  ``FILE:LINE:COL: invalid YAML: duplicate key 'lr' (first on line N): keep one``. Keys that a
  merge (``<<: *anchor``) brings in may still be overridden. Nothing else differs from
  ``yaml.safe_load``: no Python objects are ever constructed.
* An override is ``dotted.key=value``; the value is parsed as a YAML scalar or flow sequence /
  mapping: ``64`` → int, ``1e-3`` → float, ``laplace`` → str, ``null`` → None, ``true`` → bool,
  ``[0.9,0.99]`` → list, ``'[a, b]'`` (quoted) → str.
* Hydra's multirun forms give a :class:`Multirun` (a list that keeps the text it was written as):
  ``1e-3,2e-3`` — commas outside quotes and brackets split the value, each element parsed as
  above (``'a, b',c`` → ``['a, b', 'c']``) — and ``range(start, stop[, step])`` (integers, as
  Python's ``range``: ``range(0,3)`` → ``[0, 1, 2]``). What a multirun list means for a key
  (an axis, a list value, or its text as one string) is decided by the caller.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from rgflow.config import ConfigError as _LibraryConfigError

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_RANGE = re.compile(r"^range\((.*)\)$", re.DOTALL)
_INTEGER = re.compile(r"^[-+]?[0-9]+$")
_OPENERS, _CLOSERS = "[{(", "]})"


class ConfigError(_LibraryConfigError):
    """A bad configuration file, override or value. ``str(err)`` is one line naming the key or file.

    A subclass of :class:`rgflow.config.ConfigError` (itself a ``ValueError``), so one ``except``
    catches errors from either layer. ``key`` is the dotted key (or ``None`` for file errors).
    """

    def __init__(self, message: str, key: str | None = None, value: Any = None):
        ValueError.__init__(self, " ".join(str(message).split()))
        self.key, self.value, self.rule = key, value, str(self)


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also resolves ``1e-3``-style floats (YAML 1.2 behaviour) and refuses
    duplicate mapping keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            _check_unique_keys(self, node)
        return super().construct_mapping(node, deep=deep)


def _check_unique_keys(loader: yaml.SafeLoader, node: yaml.MappingNode) -> None:
    """A ``ConstructorError`` at the second occurrence of a key written twice in ``node`` (merge
    keys ``<<`` are not keys of the mapping and are skipped)."""
    first: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            earlier = first.setdefault(key, key_node)
        except TypeError:  # an unhashable key: SafeConstructor reports it
            continue
        if earlier is not key_node:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"duplicate key {key!r} (first on line {earlier.start_mark.line + 1}): keep one", key_node.start_mark)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text; a syntax error becomes ``source:LINE:COL: invalid YAML: problem``."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None


def load_yaml_file(path: str | Path) -> Any:
    """Read and parse one YAML file; missing/unreadable files and syntax errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, expected a YAML file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {err}") from None
    return parse_yaml(text, str(path))


class Multirun(list):
    """The values of a multirun override (``key=a,b,c`` or ``key=range(0,3)``), in order; ``text``
    is the value as written (stripped), for keys that take free text such as a path."""

    def __init__(self, values: Iterable[Any], text: str):
        super().__init__(values)
        self.text = text


def _top_level_pieces(raw: str) -> list[str]:
    """``raw`` split at commas outside quotes, ``[]``, ``{}`` and ``()``. A quote opens a quoted
    piece only where YAML starts a scalar (at the start, or after ``[ { ( , :`` and spaces)."""
    pieces, depth, quote, start, i = [], 0, None, 0, 0
    while i < len(raw):
        char = raw[i]
        if quote:
            if (char == "\\" and quote == '"') or (char == "'" == quote and raw[i + 1:i + 2] == "'"):
                i += 1  # an escape: \" inside double quotes, '' inside single quotes
            elif char == quote:
                quote = None
        elif char in "'\"" and (raw[:i].rstrip()[-1:] or ",") in _OPENERS + ",:":
            quote = char
        elif char in _OPENERS:
            depth += 1
        elif char in _CLOSERS:
            depth -= 1
        elif char == "," and depth == 0:
            pieces.append(raw[start:i])
            start = i + 1
        i += 1
    pieces.append(raw[start:])
    return pieces


def _parse_range(text: str, args: str, where: str) -> Multirun:
    parts = [a.strip() for a in args.split(",")]
    if not 1 <= len(parts) <= 3 or not all(_INTEGER.match(a) for a in parts):
        raise ConfigError(f"{where}: range() takes 1 to 3 integers, range(start, stop[, step]), e.g. range(0,3)")
    bounds = [int(a) for a in parts]
    if len(bounds) == 3 and bounds[2] == 0:
        raise ConfigError(f"{where}: the step of range() must not be 0")
    values = list(range(*bounds))
    if not values:
        raise ConfigError(f"{where}: {text} is empty; Python's rules apply: range(0,3) is 0, 1, 2")
    return Multirun(values, text)


def _parse_value(raw: str, where: str) -> Any:
    """One override value (see the module docstring): ``''`` → None, a YAML value, or a :class:`Multirun`."""
    text = raw.strip()
    if not text:
        return None
    pieces = _top_level_pieces(text)
    if len(pieces) > 1:
        if any(not p.strip() for p in pieces):
            raise ConfigError(f"{where}: an empty value in a comma list (a multirun list is a,b,c): "
                              "remove the extra comma")
        return Multirun((parse_yaml(p, where) for p in pieces), text)
    match = _RANGE.match(text)
    if match:
        return _parse_range(text, match.group(1), where)
    return parse_yaml(raw, where)


def parse_override(text: str) -> tuple[str, Any]:
    """``'train.betas=[0.9,0.99]'`` → ``('train.betas', [0.9, 0.99])``; ``'seed=0,1'`` →
    ``('seed', Multirun([0, 1]))``; bad syntax → ConfigError."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.epochs=5")
    if key.startswith("+") or key.startswith("~"):
        raise ConfigError(f"override {text!r}: '+'/'~' prefixes are not supported; write {key.lstrip('+~')}=VALUE")
    if not _KEY.match(key):
        raise ConfigError(f"override {text!r}: {key!r} is not a dotted key such as train.batch_size")
    return key, _parse_value(raw, f"override {text!r}")


def nest(key: str, value: Any) -> dict[str, Any]:
    """``('a.b.c', v)`` → ``{'a': {'b': {'c': v}}}``."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or an empty string."""
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.7)
    return f" (did you mean {match[0]!r}?)" if match else ""
