"""The fleet file (``SLUICE_UPSTREAMS_FILE``): the model deployments chat-proxy spreads
streams over, and how it retries and times them.

The file is read once, at start, and every mistake in it stops the service with one line
that names the file, the line and the field (``fleet.yaml line 7, upstreams[1].weight: ...``):
a typo must not become a silently ignored key or a default. So the YAML is composed into
nodes (which keep their lines) and walked here against the schema, instead of being loaded
into plain objects first. Unknown and duplicate keys are refused, booleans are not numbers,
aliases are refused (no billion laughs), and the file is at most 1 MiB.

An ``api_key`` is never printed: no error quotes a value from the file but model names,
deployment names (checked first), snake_case key names and a ca_bundle's path; a YAML syntax
error keeps the parser's problem but not its snippet of the line (nor a tag or anchor it
quotes), and the key itself is a :class:`SecretStr`.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import SecretStr

MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 16  # the schema needs 5 levels; deeper is garbage (or a recursion bomb)
MAX_MODEL_NAME = 256

NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ENV_REF = re.compile(r"\$\{(.*)\}", re.DOTALL)
MODEL_NAME = re.compile(rf"[^\s\x00-\x1f\x7f-\x9f]{{1,{MAX_MODEL_NAME}}}")
KEY_CHARS = re.compile(r"[\x21-\x7e]+")  # a header value's token: no space, no line break
HOST = re.compile(r"[A-Za-z0-9_.-]+")
SNAKE = re.compile(r"[a-z_][a-z0-9_]{0,39}")  # an unknown key shown in an error

K = TypeVar("K")
V = TypeVar("V")


class FleetError(ValueError):
    """A fleet file that cannot be used: ``<path> line <N>, <field>: <problem>``.

    ``line`` is 1-based, None when the problem is the whole file (too large, unreadable);
    ``field`` is None for the file itself (a syntax error, the wrong top level)."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, problem: str):
        self.path = str(path)
        self.line = line
        self.field = field
        self.problem = problem
        where = self.path if line is None else f"{self.path} line {line}"
        super().__init__(f"{where}, {field}: {problem}" if field else f"{where}: {problem}")


class FrozenMap(Mapping[K, V]):
    """A read-only, hashable mapping: the dataclasses below are frozen and hashable (an
    endpoint may key a dict by its deployment), which a dict field would break."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[K, V] | None = None) -> None:
        self._data: dict[K, V] = dict(data or {})

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and self._data == dict(other.items())

    def __repr__(self) -> str:
        return repr(self._data)


@dataclass(frozen=True, slots=True)
class Deployment:
    """One model deployment (one base URL; its host name may resolve to many endpoints)."""

    name: str
    base_url: str
    api_key: SecretStr | None
    models: Mapping[str, str] | None  # client name -> upstream name; None: serves any name
    weight: float = 1.0
    max_streams: int | None = None  # per endpoint (address) per worker
    priority: int = 0  # lower first; a higher tier only when no lower one is usable
    ca_bundle: str | None = None

    def __post_init__(self) -> None:
        if self.models is not None and not isinstance(self.models, FrozenMap):
            object.__setattr__(self, "models", FrozenMap(self.models))

    def upstream_model(self, client: str) -> str | None:
        """The model name to send upstream for the client's ``client``; None: not served."""
        if self.models is None:
            return client
        return self.models.get(client)


@dataclass(frozen=True, slots=True)
class RouteOptions:
    first_token_timeout: float | None = None  # None: only the upstream read timeout
    early_headers: bool = False


@dataclass(frozen=True, slots=True)
class Routing:
    attempts: int = 3  # tries per request, the first included
    # Seconds for all tries of one request, to its first token (None: the read timeout).
    deadline: float | None = None
    first_token_timeout: float | None = None
    early_headers: bool = False
    resolve_interval: float = 30.0  # seconds between DNS resolutions of host names
    failures: int = 3  # consecutive failures that put an endpoint in cooldown
    cooldown: float = 30.0  # seconds of the first cooldown
    # p2c: two random choices, the less loaded and faster wins; round_robin: in turn
    # (for a comparison: it ignores load and speed).
    balance: str = "p2c"


@dataclass(frozen=True, slots=True)
class Fleet:
    deployments: tuple[Deployment, ...]
    routing: Routing
    # Per client model name; as loaded, each already holds routing's value for a field
    # the file's ``models:`` entry did not set.
    routes: Mapping[str, RouteOptions] = field(default_factory=FrozenMap)

    def __post_init__(self) -> None:
        object.__setattr__(self, "deployments", tuple(self.deployments))
        if not isinstance(self.routes, FrozenMap):
            object.__setattr__(self, "routes", FrozenMap(self.routes))

    def options(self, model: str) -> RouteOptions:
        """The options of requests for ``model``: its route's, else routing's defaults."""
        route = self.routes.get(model)
        if route is not None:
            return route
        return RouteOptions(self.routing.first_token_timeout, self.routing.early_headers)

    def serving(self, model: str) -> tuple[Deployment, ...]:
        """The deployments that serve the client model name ``model``, in file order."""
        return tuple(d for d in self.deployments if d.upstream_model(model) is not None)

    def model_names(self) -> list[str]:
        """The client-visible model names the file lists (deployments' and routes'), sorted;
        a catch-all adds none. Bounds the metric labels."""
        names = set(self.routes)
        for deployment in self.deployments:
            names.update(deployment.models or ())
        return sorted(names)


def single_fleet(
    base_url: str,
    api_key: SecretStr | None,
    ca_bundle: str | None,
    *,
    first_token_timeout: float | None = None,
    early_headers: bool = False,
) -> Fleet:
    """The fleet of ``SLUICE_UPSTREAM_BASE_URL``: one deployment, "default", serving any
    model name; FleetError (naming the variable) for a URL a fleet file would refuse."""
    problem = _url_problem(base_url)
    if problem:
        raise FleetError("SLUICE_UPSTREAM_BASE_URL", None, None, problem)
    deployment = Deployment("default", base_url, api_key, None, ca_bundle=ca_bundle)
    routing = Routing(first_token_timeout=first_token_timeout, early_headers=early_headers)
    return Fleet((deployment,), routing, FrozenMap())


def load_fleet(path: Path, environ: Mapping[str, str] | None = None) -> Fleet:
    """The fleet of the file at ``path``; FleetError naming the line and field of the first
    problem. ``${NAME}`` api keys are read from ``environ`` (default: ``os.environ``)."""
    text = _read(path)
    try:
        root = _compose(text)
        return _Walker(path, os.environ if environ is None else environ).fleet(root)
    except _Problem as problem:
        raise FleetError(path, problem.line, problem.field, problem.message) from None


# --- reading and composing -------------------------------------------------------------


class _Problem(Exception):
    def __init__(self, line: int | None, field: str | None, message: str) -> None:
        super().__init__(message)
        self.line, self.field, self.message = line, field, message


def _read(path: Path) -> str:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)  # bounded: a FIFO or /dev/zero too
    except OSError as exc:
        raise FleetError(path, None, None, f"cannot read it: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise FleetError(path, None, None, f"over {MAX_FILE_BYTES} bytes: not a fleet file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise FleetError(path, line, None, "not UTF-8 text") from None


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML is untyped
    """SafeLoader's composer, refusing aliases and deep nesting as it goes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            line = self.peek_event().start_mark.line + 1
            raise _Problem(line, None, "aliases (*name) are not allowed in a fleet file")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            line = self.peek_event().start_mark.line + 1
            raise _Problem(line, None, f"nested over {MAX_DEPTH} levels deep")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _compose(text: str) -> yaml.Node:
    loader = None
    try:
        loader = _Loader(text)  # its reader refuses control characters here
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        parts = [p for p in (exc.context, exc.problem) if p]
        raise _Problem(line, None, "invalid YAML: " + _redact(", ".join(parts))) from None
    except yaml.reader.ReaderError as exc:  # a control character, in a str: its index
        line = text.count("\n", 0, exc.position) + 1
        raise _Problem(line, None, "invalid YAML: a control character") from None
    finally:
        if loader is not None:
            loader.dispose()
    if root is None:
        raise _Problem(1, None, "empty: expected a mapping with 'upstreams'")
    return root


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def _redact(problem: str) -> str:
    """The parser's problem without the file's text it quotes (a tag, an anchor: it could be
    part of a key); a quoted single character or a token kind (``'<scalar>'``) stays."""

    def keep(match: re.Match[str]) -> str:
        inner = match.group()[1:-1]
        short = len(inner) == 1 or (inner.startswith("\\") and len(inner) <= 6)
        token = inner.startswith("<") and inner.endswith(">") and inner[1:-1].isalpha()
        return match.group() if short or token else "'...'"

    return _QUOTED.sub(keep, problem)


# --- walking the nodes against the schema --------------------------------------------------

_TAG = "tag:yaml.org,2002:"
_SCALARS = yaml.SafeLoader("")  # its construct_yaml_* turn a scalar node into a value
_OTHER = object()  # a scalar of a tag no field takes

UPSTREAM_KEYS = (
    "name",
    "base_url",
    "api_key",
    "models",
    "weight",
    "max_streams",
    "priority",
    "ca_bundle",
)
ROUTING_KEYS = (
    "attempts",
    "deadline",
    "first_token_timeout",
    "early_headers",
    "resolve_interval",
    "failures",
    "cooldown",
    "balance",
)
BALANCES = ("p2c", "round_robin")
ROUTE_KEYS = ("first_token_timeout", "early_headers")
TOP_KEYS = ("upstreams", "routing", "models")


def _fail(node: yaml.Node, field: str | None, message: str) -> NoReturn:
    raise _Problem(_line(node), field or None, message)


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _kind(node: yaml.Node) -> str:
    """What a node is, in words, never its text."""
    tag = str(node.tag).removeprefix(_TAG)
    if isinstance(node, yaml.MappingNode):
        return "a mapping" if tag == "map" else "a tagged mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list" if tag == "seq" else "a tagged list"
    kinds = {
        "str": "a string",
        "int": "an integer",
        "float": "a number",
        "bool": "a boolean",
        "null": "nothing (null)",
        "timestamp": "a date",
    }
    return kinds.get(tag, "a tagged value")


def _scalar(node: yaml.Node, field: str) -> object:
    if not isinstance(node, yaml.ScalarNode):
        _fail(node, field, f"expected a single value, got {_kind(node)}")
    tag = str(node.tag).removeprefix(_TAG)
    try:
        if tag == "str":
            return str(node.value)
        if tag == "null":
            return None
        if tag == "bool":
            return bool(_SCALARS.construct_yaml_bool(node))
        if tag == "int":
            return int(_SCALARS.construct_yaml_int(node))
        if tag == "float":
            return float(_SCALARS.construct_yaml_float(node))
    except (ValueError, KeyError, OverflowError):  # !!int abc, !!bool maybe, 5000 digits
        _fail(node, field, f"not a valid {tag}")
    return _OTHER  # a date, !!binary, !custom: no field takes one; the caller names it


def _key_path(parent: str, key: str) -> str:
    """``parent.key``, or ``parent['key']`` for a key that is not a plain word."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", key):
        return f"{parent}[{_show(key)}]"
    return f"{parent}.{key}" if parent else key


def _show(key: str) -> str:
    return repr(key if len(key) <= 40 else key[:40] + "...")


def _pairs(node: yaml.Node, field: str) -> list[tuple[str, yaml.Node, yaml.Node]]:
    """A mapping's (key, key node, value node), in order; keys are strings, once each."""
    if not isinstance(node, yaml.MappingNode) or node.tag != _TAG + "map":
        _fail(node, field, f"expected a mapping, got {_kind(node)}")
    seen: dict[str, int] = {}
    pairs = []
    for key_node, value_node in node.value:
        if key_node.tag == _TAG + "merge":
            _fail(key_node, field, "merge keys (<<) are not allowed")
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _TAG + "str":
            _fail(key_node, field, f"keys must be strings, got {_kind(key_node)} (quote it)")
        key = str(key_node.value)
        if key in seen:
            at = _key_path(field, key)
            _fail(key_node, at, f"duplicate key (first at line {seen[key]})")
        seen[key] = _line(key_node)
        pairs.append((key, key_node, value_node))
    return pairs


def _fields(
    node: yaml.Node, field: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()
) -> dict[str, yaml.Node]:
    """A mapping of the schema's keys to their value nodes; unknown keys refused, a missing
    required one named at the line of the mapping that lacks it."""
    values: dict[str, yaml.Node] = {}
    for key, key_node, value_node in _pairs(node, field):
        if key not in allowed:
            near = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {near[0]!r}?" if near else "allowed: " + ", ".join(allowed)
            if SNAKE.fullmatch(key):
                _fail(key_node, _key_path(field, key), f"unknown key; {hint}")
            # Not shown: ``{api_key sk-...}`` (a colon left out) makes the key a key.
            _fail(key_node, field, f"an unknown key (not shown: not a snake_case word); {hint}")
        values[key] = value_node
    for key in required:
        if key not in values:
            _fail(node, _key_path(field, key), "required, missing")
    return values


def _string(node: yaml.Node, field: str) -> str:
    value = _scalar(node, field)
    if not isinstance(value, str):
        hint = " (quote it)" if isinstance(node, yaml.ScalarNode) and node.style is None else ""
        _fail(node, field, f"expected a string, got {_kind(node)}{hint}")
    return value


def _integer(node: yaml.Node, field: str, low: int, high: int | None = None) -> int:
    rule = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
    value = _scalar(node, field)
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(node, field, f"expected {rule}, got {_kind(node)}")
    if value < low or (high is not None and value > high):
        _fail(node, field, f"must be {rule}")
    return value


def _number(
    node: yaml.Node,
    field: str,
    *,
    above: float | None = None,
    least: float | None = None,
    most: float | None = None,
) -> float:
    """A finite int or float (a boolean is not a number) in range."""
    bounds = [
        f"> {above:g}" if above is not None else "",
        f">= {least:g}" if least is not None else "",
    ]
    bounds.append(f"<= {most:g}" if most is not None else "")
    rule = "a number " + " and ".join(b for b in bounds if b)
    value = _scalar(node, field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(node, field, f"expected {rule}, got {_kind(node)}")
    try:
        number = float(value)
    except OverflowError:
        _fail(node, field, f"must be {rule}")
    if (
        not math.isfinite(number)
        or (above is not None and number <= above)
        or (least is not None and number < least)
        or (most is not None and number > most)
    ):
        _fail(node, field, f"must be {rule}")
    return number


def _timeout(node: yaml.Node, field: str) -> float | None:
    """Seconds > 0, or null: none."""
    if isinstance(node, yaml.ScalarNode) and node.tag == _TAG + "null":
        return None
    try:
        return _number(node, field, above=0)
    except _Problem as problem:
        problem.message += " (or null)"
        raise


def _boolean(node: yaml.Node, field: str) -> bool:
    value = _scalar(node, field)
    if not isinstance(value, bool):
        _fail(node, field, f"expected true or false, got {_kind(node)}")
    return value


def _model_name(name: str, node: yaml.Node, field: str) -> str:
    if not MODEL_NAME.fullmatch(name):
        _fail(node, field, f"a model name is 1 to {MAX_MODEL_NAME} characters, no spaces")
    return name


def _url_problem(url: str) -> str | None:
    """Why ``url`` is not a usable base URL; never quoting it (it could hold a password)."""
    if not KEY_CHARS.fullmatch(url):
        return "not a URL: empty, or spaces, control or non-ASCII characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # an unclosed [, a port that is not a number or past 65535
        return "not a URL with a valid host and port (1 to 65535)"
    if parts.scheme not in ("http", "https"):
        return "expected an http:// or https:// URL"
    if "@" in parts.netloc:
        return "no user or password in the URL (use api_key)"
    if "?" in url or "#" in url:
        return "no query or fragment in the URL"
    host = parts.hostname
    if not host:
        return "the URL has no host"
    if port == 0 or parts.netloc.endswith(":"):
        return "the URL's port must be a number from 1 to 65535"
    if not parts.netloc.startswith("[") and (  # urlsplit checked an IPv6 [address]
        not HOST.fullmatch(host) or ".." in host or host.startswith((".", "-"))
    ):
        return "the URL's host is not a valid host name or address"
    return None


class _Walker:
    def __init__(self, path: Path, environ: Mapping[str, str]) -> None:
        self.base = path.parent
        self.environ = environ

    def fleet(self, root: yaml.Node) -> Fleet:
        if not isinstance(root, yaml.MappingNode):
            _fail(root, None, f"expected a mapping with 'upstreams', got {_kind(root)}")
        top = _fields(root, "", TOP_KEYS, ("upstreams",))
        deployments = self.deployments(top["upstreams"])
        routing = self.routing(top["routing"]) if "routing" in top else Routing()
        routes = self.routes(top["models"], routing, deployments) if "models" in top else {}
        return Fleet(deployments, routing, FrozenMap(routes))

    def deployments(self, node: yaml.Node) -> tuple[Deployment, ...]:
        if not isinstance(node, yaml.SequenceNode) or node.tag != _TAG + "seq":
            _fail(node, "upstreams", f"expected a list of deployments, got {_kind(node)}")
        if not node.value:
            _fail(node, "upstreams", "empty: list at least one deployment")
        names: dict[str, int] = {}
        deployments = []
        for index, item in enumerate(node.value):
            at = f"upstreams[{index}]"
            deployment, name_node = self.deployment(item, at)
            if deployment.name in names:
                message = (
                    f"duplicate name {deployment.name!r} (first at line {names[deployment.name]})"
                )
                _fail(name_node, f"{at}.name", message)
            names[deployment.name] = _line(name_node)
            deployments.append(deployment)
        return tuple(deployments)

    def deployment(self, node: yaml.Node, at: str) -> tuple[Deployment, yaml.Node]:
        values = _fields(node, at, UPSTREAM_KEYS, ("name", "base_url"))
        name_node = values["name"]
        name = _string(name_node, f"{at}.name")
        if not NAME.fullmatch(name):
            _fail(name_node, f"{at}.name", f"must match {NAME.pattern} (it is a metric label)")
        base_url = _string(values["base_url"], f"{at}.base_url")
        problem = _url_problem(base_url)
        if problem:
            _fail(values["base_url"], f"{at}.base_url", problem)
        deployment = Deployment(name, base_url, None, None)
        changes: dict[str, Any] = {}
        for key, value in values.items():
            field = f"{at}.{key}"
            if key == "api_key":
                changes[key] = self.api_key(value, field)
            elif key == "models":
                changes[key] = FrozenMap(self.served(value, field))
            elif key == "weight":
                changes[key] = _number(value, field, above=0, most=1000)
            elif key == "max_streams":
                changes[key] = _integer(value, field, 1)
            elif key == "priority":
                changes[key] = _integer(value, field, 0, 100)
            elif key == "ca_bundle":
                changes[key] = self.ca_bundle(value, field, base_url)
        return replace(deployment, **changes), name_node

    def api_key(self, node: yaml.Node, at: str) -> SecretStr:
        """A literal key or a whole-string ``${NAME}``; the value is never put in a message."""
        value = _scalar(node, at)
        if not isinstance(value, str):
            _fail(node, at, f"expected a string, got {_kind(node)}")
        reference = ENV_REF.fullmatch(value)
        if reference:
            variable = reference.group(1)
            if not ENV_NAME.fullmatch(variable):
                message = "${...} must name an environment variable: [A-Za-z_][A-Za-z0-9_]*"
                _fail(node, at, message)
            value = self.environ.get(variable, "")
            if not value:
                _fail(node, at, f"environment variable {variable} is unset or empty")
            if not KEY_CHARS.fullmatch(value):
                message = f"the value of {variable} has spaces, control or non-ASCII characters"
                _fail(node, at, message)
        elif not KEY_CHARS.fullmatch(value):
            _fail(node, at, "empty, or has spaces, control or non-ASCII characters")
        return SecretStr(value)

    def served(self, node: yaml.Node, at: str) -> dict[str, str]:
        """A deployment's ``models``: client name -> upstream name."""
        served: dict[str, str] = {}
        lines: dict[str, int] = {}

        def add(client: str, upstream: str, where: yaml.Node, field: str) -> None:
            if client in served:
                message = f"model {client!r} is listed twice (first at line {lines[client]})"
                _fail(where, field, message)
            served[client], lines[client] = upstream, _line(where)

        def alias(client: str, key: yaml.Node, value: yaml.Node, parent: str) -> None:
            field = _key_path(parent, client)
            _model_name(client, key, field)
            add(client, _model_name(_string(value, field), value, field), key, field)

        if isinstance(node, yaml.SequenceNode) and node.tag == _TAG + "seq":
            for index, item in enumerate(node.value):
                field = f"{at}[{index}]"
                if isinstance(item, yaml.MappingNode):
                    pairs = _pairs(item, field)
                    if len(pairs) != 1:
                        _fail(item, field, "an alias is a one-key mapping {client: upstream}")
                    alias(*pairs[0], field)
                elif isinstance(item, yaml.ScalarNode):
                    name = _model_name(_string(item, field), item, field)
                    add(name, name, item, field)
                else:
                    _fail(item, field, f"expected a model name or an alias, got {_kind(item)}")
        elif isinstance(node, yaml.MappingNode):
            for pair in _pairs(node, at):
                alias(*pair, at)
        else:
            message = f"expected a list or a mapping of model names, got {_kind(node)}"
            _fail(node, at, message + " (omit the key to serve every model)")
        if not served:
            _fail(node, at, "empty: list a model, or omit the key to serve every model")
        return served

    def ca_bundle(self, node: yaml.Node, at: str, base_url: str) -> str:
        """An existing PEM file of CAs, for an https upstream; relative to the fleet file."""
        name = _string(node, at)
        if not base_url.startswith("https:"):
            _fail(node, at, "only for an https:// base_url")
        if not name:
            _fail(node, at, "empty (omit it for the system's trust store)")
        path = self.base / name
        if not path.is_file():
            _fail(node, at, f"no such file: {str(path)!r}")
        try:
            ssl.create_default_context(cafile=str(path))
        except (ssl.SSLError, OSError, ValueError):
            _fail(node, at, "not a readable PEM file of CA certificates")
        return str(path)

    def routing(self, node: yaml.Node) -> Routing:
        changes: dict[str, Any] = {}
        for key, value in _fields(node, "routing", ROUTING_KEYS).items():
            field = f"routing.{key}"
            if key == "attempts":
                changes[key] = _integer(value, field, 1, 10)
            elif key == "failures":
                changes[key] = _integer(value, field, 1, 1000)
            elif key == "early_headers":
                changes[key] = _boolean(value, field)
            elif key == "first_token_timeout":
                changes[key] = _timeout(value, field)
            elif key == "balance":
                choice = _string(value, field)
                if choice not in BALANCES:
                    _fail(value, field, f"must be one of {', '.join(BALANCES)}")
                changes[key] = choice
            elif key == "resolve_interval":
                changes[key] = _number(value, field, least=1)
            else:  # deadline, cooldown
                changes[key] = _number(value, field, above=0)
        return replace(Routing(), **changes)

    def routes(
        self, node: yaml.Node, routing: Routing, deployments: tuple[Deployment, ...]
    ) -> dict[str, RouteOptions]:
        """The file's ``models:``, each field it leaves out taken from ``routing``."""
        catch_all = any(d.models is None for d in deployments)
        listed = {name for d in deployments for name in (d.models or ())}
        routes = {}
        for model, key, value in _pairs(node, "models"):
            at = _key_path("models", model)
            _model_name(model, key, at)
            if not catch_all and model not in listed:
                _fail(key, at, "no deployment serves this model (and none serves every model)")
            options = RouteOptions(routing.first_token_timeout, routing.early_headers)
            changes: dict[str, Any] = {}
            for option, option_value in _fields(value, at, ROUTE_KEYS).items():
                field = f"{at}.{option}"
                if option == "first_token_timeout":
                    changes[option] = _timeout(option_value, field)
                else:
                    changes[option] = _boolean(option_value, field)
            routes[model] = replace(options, **changes)
        return routes
