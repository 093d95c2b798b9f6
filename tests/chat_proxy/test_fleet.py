"""The fleet file: what it accepts, and that every mistake in it names its line and field
(and never the upstream key)."""

from __future__ import annotations

import dataclasses
import subprocess
import textwrap
import traceback
from pathlib import Path

import pytest
from pydantic import SecretStr

from sluice_services.chat_proxy.fleet import (
    MAX_FILE_BYTES,
    Deployment,
    Fleet,
    FleetError,
    RouteOptions,
    Routing,
    load_fleet,
    single_fleet,
)

SECRET = "sk-SECRET-0123456789"
ENV = {"VLLM_KEY": SECRET}


def write(tmp_path: Path, text: str, name: str = "fleet.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Fleet:
    return load_fleet(write(tmp_path, text), ENV if environ is None else environ)


def refused(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> FleetError:
    path = write(tmp_path, text)
    with pytest.raises(FleetError) as caught:
        load_fleet(path, ENV if environ is None else environ)
    error = caught.value
    assert str(error).startswith(f"{path} line ")
    assert_no_secret(error)
    return error


def assert_no_secret(thing: object) -> None:
    """Not in its str or repr, nor (for an error) anywhere in its printed traceback."""
    shown = [str(thing), repr(thing)]
    if isinstance(thing, BaseException):
        shown.append("".join(traceback.format_exception(thing)))
    for text in shown:
        assert "SECRET" not in text, text


@pytest.fixture
def ca_pem(tmp_path: Path) -> Path:
    """A real CA certificate (openssl, as make test installs it)."""
    cert, key = tmp_path / "ca.pem", tmp_path / "ca.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=fleet-test-ca"),
        ],
        check=True,
        capture_output=True,
    )
    return cert


# --- what it accepts ---------------------------------------------------------------------


def test_the_issues_example(tmp_path: Path, ca_pem: Path) -> None:
    fleet = load(
        tmp_path,
        f"""\
        upstreams:                          # a comment
          - name: vllm-a
            base_url: http://vllm-a:8000/v1
            api_key: ${{VLLM_KEY}}
            models: [mock]
            weight: 1
            max_streams: 200
            priority: 0
          - name: hosted
            base_url: https://api.example.com/v1
            api_key: sk-literal
            models: [mock]
            weight: 0.5
            priority: 1
            ca_bundle: {ca_pem}
        routing:
          attempts: 3
          deadline: 30
          first_token_timeout: null
          early_headers: false
          resolve_interval: 30
          failures: 3
          cooldown: 30
        models:
          mock:
            first_token_timeout: 5
            early_headers: true
        """,
    )
    first, second = fleet.deployments
    assert first == Deployment(
        "vllm-a", "http://vllm-a:8000/v1", SecretStr(SECRET), {"mock": "mock"}, 1.0, 200, 0
    )
    assert first.api_key is not None and first.api_key.get_secret_value() == SECRET
    assert isinstance(first.weight, float)
    assert second.name == "hosted" and second.priority == 1 and second.weight == 0.5
    assert second.api_key is not None and second.api_key.get_secret_value() == "sk-literal"
    assert second.ca_bundle == str(ca_pem) and second.max_streams is None
    assert fleet.routing == Routing(deadline=30.0)
    assert fleet.routes == {"mock": RouteOptions(5.0, True)}
    assert fleet.options("mock") == RouteOptions(5.0, True)
    assert fleet.serving("mock") == (first, second)
    assert fleet.serving("other") == ()
    assert fleet.model_names() == ["mock"]
    assert_no_secret(fleet)
    assert_no_secret(first)
    assert hash(fleet) == hash(load(tmp_path, (tmp_path / "fleet.yaml").read_text()))


def test_the_smallest_file_takes_every_default(tmp_path: Path) -> None:
    fleet = load(tmp_path, "upstreams: [{name: a, base_url: 'http://a/v1'}]")
    assert fleet.deployments == (Deployment("a", "http://a/v1", None, None),)
    (only,) = fleet.deployments
    assert (only.weight, only.max_streams, only.priority, only.ca_bundle) == (1.0, None, 0, None)
    assert fleet.routing == Routing(3, None, None, False, 30.0, 3, 30.0, "p2c")
    assert fleet.routes == {}


def test_aliases_in_both_forms(tmp_path: Path) -> None:
    fleet = load(
        tmp_path,
        """\
        upstreams:
          - name: listed
            base_url: http://a:8000/v1
            models: [mock, {gpt-4o: meta-llama/Llama-3.1-8B-Instruct}, "llama3:8b"]
          - name: mapped
            base_url: http://b:8000/v1
            models: {gpt-4o: qwen, mock: mock-gpt}
        """,
    )
    listed, mapped = fleet.deployments
    assert dict(listed.models or {}) == {
        "mock": "mock",
        "gpt-4o": "meta-llama/Llama-3.1-8B-Instruct",
        "llama3:8b": "llama3:8b",
    }
    assert listed.upstream_model("gpt-4o") == "meta-llama/Llama-3.1-8B-Instruct"
    assert mapped.upstream_model("gpt-4o") == "qwen"
    assert mapped.upstream_model("mock") == "mock-gpt"
    assert mapped.upstream_model("llama3:8b") is None
    assert listed.upstream_model("meta-llama/Llama-3.1-8B-Instruct") is None  # not a client name
    assert fleet.serving("gpt-4o") == (listed, mapped)
    assert fleet.serving("llama3:8b") == (listed,)
    assert fleet.model_names() == ["gpt-4o", "llama3:8b", "mock"]


def test_a_catch_all_serves_every_name_and_lists_none(tmp_path: Path) -> None:
    fleet = load(
        tmp_path,
        """\
        upstreams:
          - {name: local, base_url: 'http://a/v1', models: [small]}
          - {name: anything, base_url: 'https://b.example/v1', priority: 5}
        models:
          big: {early_headers: true}    # served by the catch-all only
        """,
    )
    local, anything = fleet.deployments
    assert anything.models is None
    assert anything.upstream_model("whatever-model") == "whatever-model"
    assert fleet.serving("whatever-model") == (anything,)
    assert fleet.serving("small") == (local, anything)  # priority is the balancer's business
    assert fleet.model_names() == ["big", "small"]


def test_options_fall_back_field_by_field(tmp_path: Path) -> None:
    fleet = load(
        tmp_path,
        """\
        upstreams: [{name: a, base_url: 'http://a/v1'}]
        routing: {first_token_timeout: 10, early_headers: true}
        models:
          timed: {first_token_timeout: 2.5}
          untimed: {first_token_timeout: null}
          quiet: {early_headers: false}
          plain: {}
        """,
    )
    assert fleet.options("timed") == RouteOptions(2.5, True)
    assert fleet.options("untimed") == RouteOptions(None, True)  # null: explicitly none
    assert fleet.options("quiet") == RouteOptions(10.0, False)
    assert fleet.options("plain") == RouteOptions(10.0, True)
    assert fleet.options("not-in-the-file") == RouteOptions(10.0, True)
    assert load(tmp_path, "upstreams: [{name: a, base_url: 'http://a/v1'}]").options(
        "x"
    ) == RouteOptions(None, False)


def test_env_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = """\
    upstreams:
      - name: a
        base_url: http://a/v1
        api_key: ${VLLM_KEY}
    """
    (only,) = load(tmp_path, text, {"VLLM_KEY": "from-the-mapping"}).deployments
    assert only.api_key is not None and only.api_key.get_secret_value() == "from-the-mapping"
    monkeypatch.setenv("VLLM_KEY", "from-os-environ")
    (only,) = load_fleet(write(tmp_path, text)).deployments  # default: os.environ
    assert only.api_key is not None and only.api_key.get_secret_value() == "from-os-environ"
    # Only a whole string is a reference; anything else is a literal key.
    for literal in ("x${VLLM_KEY}", "$VLLM_KEY", "${VLLM_KEY}x"):
        (only,) = load(tmp_path, text.replace("${VLLM_KEY}", f"'{literal}'")).deployments
        assert only.api_key is not None and only.api_key.get_secret_value() == literal


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({}, "environment variable VLLM_KEY is unset or empty"),
        ({"VLLM_KEY": ""}, "environment variable VLLM_KEY is unset or empty"),
        ({"VLLM_KEY": SECRET + "\n"}, "the value of VLLM_KEY has spaces"),
        ({"VLLM_KEY": "sk SECRET"}, "the value of VLLM_KEY has spaces"),
    ],
)
def test_env_reference_missing_empty_or_unusable(
    tmp_path: Path, environ: dict[str, str], problem: str
) -> None:
    text = "upstreams:\n  - name: a\n    base_url: http://a/v1\n    api_key: ${VLLM_KEY}\n"
    error = refused(tmp_path, text, environ)
    assert (error.line, error.field) == (4, "upstreams[0].api_key"), error
    assert problem in error.problem, error


def test_the_key_is_never_shown(tmp_path: Path) -> None:
    """Hostile: the key sits on the very line of the error, or is the error."""
    lines = [
        # another field's error on the key's line
        "upstreams: [{name: BAD NAME, base_url: 'http://a/v1', api_key: sk-SECRET-1}]",
        "upstreams: [{name: a, base_url: 'http://a/v1', api_key: sk-SECRET-1, weight: true}]",
        "upstreams: [{name: a, base_url: 'http://a/v1', api_key: sk-SECRET-1, wieght: 1}]",
        # a colon left out: the key becomes a key
        "upstreams: [{name: a, base_url: 'http://a/v1', api_key sk-SECRET-1}]",
        "upstreams: [{name: a, base_url: 'http://a/v1', sk-SECRET-1}]",
        # the key's own value is wrong
        "upstreams: [{name: a, base_url: 'http://a/v1', api_key: 'sk-SECRET 1'}]",
        "upstreams: [{name: a, base_url: 'http://a/v1', api_key: '${sk-SECRET}'}]",
        "upstreams: [{name: a, base_url: 'http://a/v1', api_key: !sk-SECRET x}]",
        "upstreams: [{name: a, base_url: 'http://a/v1', api_key: [sk-SECRET]}]",
        # a key written into the URL
        "upstreams: [{name: a, base_url: 'http://user:sk-SECRET@a/v1'}]",
        "upstreams: [{name: a, base_url: 'http://a/v1?key=sk-SECRET'}]",
        "upstreams: [{name: a, base_url: 'http://a/sk-SECRET v1'}]",
        # YAML that does not parse, on the key's line: the parser's snippet is left out
        "upstreams: [{name: a, base_url: 'http://a/v1', api_key: \"sk-SECRET-1}]",
        "upstreams:\n  - name: a\n    api_key: sk-SECRET: 1\n",
        "upstreams:\n  - name: a\n    api_key: !sk-SECRET!x y\n",
        'upstreams:\n  - name: a\n    api_key: "sk-SECRET\\q"\n',
        "upstreams:\n  - name: a\n    api_key: &sk-SECRET x\n    other: *sk-SECRET\n",
        "upstreams:\n  - name: a\n    api_key: &sk-SECRET x\n    other: &sk-SECRET y\n",
        "upstreams:\n  - name: a\n    api_key: sk-SECRET\x07\n",
    ]
    for text in lines:
        error = refused(tmp_path, text)
        assert error.line is not None and error.line >= 1, error


# --- what it refuses, and where it says --------------------------------------------------

UPSTREAM = """\
upstreams:
  - name: vllm-a
    base_url: http://vllm-a:8000/v1
    {line}
"""


@pytest.mark.parametrize(
    ("line", "field", "problem"),
    [
        # weight
        ("weight: true", "weight", "expected a number > 0 and <= 1000, got a boolean"),
        ("weight: '1'", "weight", "got a string"),
        ("weight: 0", "weight", "must be a number > 0 and <= 1000"),
        ("weight: -1", "weight", "must be a number > 0"),
        ("weight: 1000.5", "weight", "<= 1000"),
        ("weight: .inf", "weight", "must be a number"),
        ("weight: .nan", "weight", "must be a number"),
        ("weight: 1.0e+400", "weight", "must be a number"),
        ("weight: [1]", "weight", "expected a single value, got a list"),
        ("weight: null", "weight", "got nothing (null)"),
        ("weight: 2001-01-01", "weight", "got a date"),
        # max_streams
        ("max_streams: 0", "max_streams", "must be an integer >= 1"),
        ("max_streams: 1.5", "max_streams", "expected an integer >= 1, got a number"),
        ("max_streams: true", "max_streams", "got a boolean"),
        ("max_streams: null", "max_streams", "got nothing (null)"),
        ("max_streams: " + "9" * 5000, "max_streams", "not a valid int"),
        # priority
        ("priority: -1", "priority", "must be an integer from 0 to 100"),
        ("priority: 101", "priority", "must be an integer from 0 to 100"),
        ("priority: 1.0", "priority", "got a number"),
        ("priority: !!int x", "priority", "not a valid int"),
        # api_key
        ("api_key: 12345", "api_key", "expected a string, got an integer"),
        ("api_key: ''", "api_key", "empty"),
        ("api_key: null", "api_key", "got nothing (null)"),
        ("api_key: '${not-a-name}'", "api_key", "must name an environment variable"),
        ("api_key: '${}'", "api_key", "must name an environment variable"),
        ("api_key: 'key with space'", "api_key", "has spaces"),
        ("api_key: |\n      multi\n      line", "api_key", "has spaces, control"),
        # models
        ("models: []", "models", "empty: list a model, or omit the key"),
        ("models: {}", "models", "empty: list a model, or omit the key"),
        ("models: null", "models", "expected a list or a mapping of model names"),
        ("models: mock", "models", "expected a list or a mapping of model names, got a string"),
        ("models: [mock, mock]", "models[1]", "model 'mock' is listed twice (first at line 4)"),
        ("models: [mock, {mock: b}]", "models[1].mock", "listed twice"),
        ("models: [{a: b, c: d}]", "models[0]", "an alias is a one-key mapping"),
        ("models: [{}]", "models[0]", "an alias is a one-key mapping"),
        ("models: [[a]]", "models[0]", "expected a model name or an alias, got a list"),
        ("models: [1]", "models[0]", "expected a string, got an integer (quote it)"),
        ("models: [yes]", "models[0]", "got a boolean (quote it)"),
        ("models: ['a b']", "models[0]", "a model name is 1 to 256 characters, no spaces"),
        ("models: ['']", "models[0]", "a model name is 1 to 256"),
        ("models: ['" + "m" * 257 + "']", "models[0]", "a model name is 1 to 256"),
        ("models: [{a: 1}]", "models[0].a", "expected a string, got an integer"),
        ("models: [{a: ''}]", "models[0].a", "a model name is"),
        ("models: [{'a b': c}]", "models[0]['a b']", "a model name is"),
        ("models: [{a: [b]}]", "models[0].a", "expected a single value, got a list"),
        ("models: {a: b, 1: c}", "models", "keys must be strings, got an integer"),
        # ca_bundle
        ("ca_bundle: /etc/hostname", "ca_bundle", "only for an https:// base_url"),
        # keys
        ("wieght: 1", "wieght", "unknown key; did you mean 'weight'?"),
        ("zzz: 1", "zzz", "unknown key; allowed: name, base_url, api_key, models"),
        ("base-url: x", None, "an unknown key (not shown: not a snake_case word); did you"),
        ("Weight: 1", None, "an unknown key (not shown"),
        ("name: again", "name", "duplicate key (first at line 2)"),
        ("<<: {weight: 1}", None, "merge keys (<<) are not allowed"),
        ("? [a, b]\n    : 1", None, "keys must be strings, got a list"),
    ],
)
def test_a_deployment_field(tmp_path: Path, line: str, field: str | None, problem: str) -> None:
    error = refused(tmp_path, UPSTREAM.replace("{line}", line))
    assert error.line == 4, error
    expected = "upstreams[0]" if field is None else f"upstreams[0].{field}"
    assert error.field == expected, error
    assert problem in error.problem, error
    assert str(error) == f"{tmp_path / 'fleet.yaml'} line 4, {expected}: {error.problem}"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("ftp://a/v1", "expected an http:// or https:// URL"),
        ("a:8000/v1", "expected an http:// or https:// URL"),
        ("http:///v1", "the URL has no host"),
        ("http://user:pw@a/v1", "no user or password in the URL"),
        ("http://a:99999/v1", "valid host and port"),
        ("http://a:0/v1", "port must be a number from 1 to 65535"),
        ("http://a:/v1", "port must be a number from 1 to 65535"),
        ("http://a:x/v1", "valid host and port"),
        ("http://a/v1?x=1", "no query or fragment"),
        ("http://a/v1?", "no query or fragment"),
        ("http://a/v1#f", "no query or fragment"),
        ("http://a b/v1", "spaces, control or non-ASCII"),
        ("http://ä.example/v1", "spaces, control or non-ASCII"),
        ("''", "empty"),
        ("http://[::1/v1", "valid host and port"),
        ("http://[nothex]/v1", "valid host and port"),
        ("http://a..b/v1", "not a valid host name"),
        ("http://a%2fb/v1", "not a valid host name"),
        ("8000", "expected a string, got an integer"),
    ],
)
def test_a_base_url(tmp_path: Path, value: str, problem: str) -> None:
    text = f"upstreams:\n  - name: vllm-a\n    base_url: {value}\n"
    error = refused(tmp_path, text)
    assert (error.line, error.field) == (3, "upstreams[0].base_url"), error
    assert problem in error.problem, error


def test_good_base_urls(tmp_path: Path) -> None:
    for url in ("http://[::1]:8000/v1", "https://10.0.0.1/v1", "http://vllm_a.ns.svc:80"):
        (only,) = load(tmp_path, f"upstreams: [{{name: a, base_url: '{url}'}}]").deployments
        assert only.base_url == url


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("Vllm-A", "must match"),
        ("-a", "must match"),
        ("a b", "must match"),
        ("a" * 64, "must match"),
        ("|\n      vllm-a", "must match"),  # a block scalar's trailing line break
        ("123", "expected a string, got an integer (quote it)"),
        ("null", "expected a string, got nothing (null)"),
    ],
)
def test_a_name(tmp_path: Path, value: str, problem: str) -> None:
    error = refused(tmp_path, f"upstreams:\n  - base_url: http://a/v1\n    name: {value}\n")
    assert (error.line, error.field) == (3, "upstreams[0].name"), error
    assert problem in error.problem, error
    (only,) = load(
        tmp_path, f"upstreams: [{{name: '{'a' * 63}', base_url: 'http://a'}}]"
    ).deployments
    assert only.name == "a" * 63


def test_ca_bundle(tmp_path: Path, ca_pem: Path) -> None:
    text = "upstreams:\n  - name: a\n    base_url: https://a/v1\n    ca_bundle: {}\n"
    (only,) = load(tmp_path, text.format("ca.pem")).deployments
    assert only.ca_bundle == str(tmp_path / "ca.pem")  # relative: next to the fleet file
    (tmp_path / "junk.pem").write_text("not a certificate")
    for value, problem in [
        ("missing.pem", "no such file"),
        (".", "no such file"),  # a directory
        ("junk.pem", "not a readable PEM file of CA certificates"),
        ("''", "empty"),
        ("5", "expected a string"),
    ]:
        error = refused(tmp_path, text.format(value))
        assert (error.line, error.field) == (4, "upstreams[0].ca_bundle"), error
        assert problem in error.problem, error


ROUTING = """\
upstreams:
  - {name: a, base_url: 'http://a/v1', models: [mock]}
routing:
  {line}
"""


@pytest.mark.parametrize(
    ("line", "field", "problem"),
    [
        ("attempts: 0", "attempts", "must be an integer from 1 to 10"),
        ("attempts: 11", "attempts", "must be an integer from 1 to 10"),
        ("attempts: true", "attempts", "got a boolean"),
        ("attempts: 2.0", "attempts", "got a number"),
        ("deadline: 0", "deadline", "must be a number > 0"),
        ("deadline: '30'", "deadline", "got a string"),
        ("deadline: " + "9" * 400, "deadline", "must be a number > 0"),
        ("deadline: false", "deadline", "got a boolean"),
        ("first_token_timeout: 0", "first_token_timeout", "must be a number > 0 (or null)"),
        ("first_token_timeout: true", "first_token_timeout", "got a boolean (or null)"),
        ("first_token_timeout: -.inf", "first_token_timeout", "must be a number > 0"),
        ("early_headers: 1", "early_headers", "expected true or false, got an integer"),
        ("early_headers: 'true'", "early_headers", "expected true or false, got a string"),
        ("early_headers: null", "early_headers", "got nothing (null)"),
        ("resolve_interval: 0.5", "resolve_interval", "must be a number >= 1"),
        ("resolve_interval: 0", "resolve_interval", "must be a number >= 1"),
        ("failures: 0", "failures", "must be an integer from 1 to 1000"),
        ("failures: 1001", "failures", "must be an integer from 1 to 1000"),
        ("cooldown: 0", "cooldown", "must be a number > 0"),
        ("cooldown: .nan", "cooldown", "must be a number > 0"),
        ("balance: random", "balance", "must be one of p2c, round_robin"),
        ("balance: 1", "balance", "expected a string, got an integer"),
        ("atempts: 3", "atempts", "unknown key; did you mean 'attempts'?"),
    ],
)
def test_a_routing_field(tmp_path: Path, line: str, field: str, problem: str) -> None:
    error = refused(tmp_path, ROUTING.replace("{line}", line))
    assert (error.line, error.field) == (4, f"routing.{field}"), error
    assert problem in error.problem, error


def test_routing_values_are_kept(tmp_path: Path) -> None:
    fleet = load(
        tmp_path,
        ROUTING.replace(
            "{line}",
            "{attempts: 10, deadline: 0.5, first_token_timeout: 1, early_headers: yes,"
            " resolve_interval: 1, failures: 1000, cooldown: 2.5}",
        ),
    )
    assert fleet.routing == Routing(10, 0.5, 1.0, True, 1.0, 1000, 2.5)
    assert isinstance(fleet.routing.deadline, float) and isinstance(fleet.routing.attempts, int)


ROUTE = """\
upstreams:
  - {name: a, base_url: 'http://a/v1', models: [mock]}
models:
  mock:
    {line}
"""


@pytest.mark.parametrize(
    ("line", "field", "problem"),
    [
        ("first_token_timeout: -1", "models.mock.first_token_timeout", "> 0 (or null)"),
        ("first_token_timeout: '5'", "models.mock.first_token_timeout", "got a string"),
        ("early_headers: 2", "models.mock.early_headers", "expected true or false"),
        ("early_header: true", "models.mock.early_header", "did you mean 'early_headers'?"),
        ("deadline: 5", "models.mock.deadline", "unknown key; allowed: first_token_timeout"),
    ],
)
def test_a_route_field(tmp_path: Path, line: str, field: str, problem: str) -> None:
    error = refused(tmp_path, ROUTE.replace("{line}", line))
    assert (error.line, error.field) == (5, field), error
    assert problem in error.problem, error


@pytest.mark.parametrize(
    ("text", "line", "field", "problem"),
    [
        ("models:\n  mock: null\n", 4, "models.mock", "expected a mapping, got nothing (null)"),
        ("models:\n  other: {}\n", 4, "models.other", "no deployment serves this model"),
        ("models: [mock]\n", 3, "models", "expected a mapping, got a list"),
        ("models:\n  'a b': {}\n", 4, "models['a b']", "a model name is"),
        ("models:\n  mock: {}\n  mock: {}\n", 5, "models.mock", "duplicate key (first at line 4)"),
        ("routing: null\n", 3, "routing", "expected a mapping, got nothing (null)"),
        ("routing: [attempts]\n", 3, "routing", "expected a mapping, got a list"),
        ("routing: {}\nrouting: {}\n", 4, "routing", "duplicate key (first at line 3)"),
        ("upstream: []\n", 3, "upstream", "unknown key; did you mean 'upstreams'?"),
    ],
)
def test_the_top_level_sections(
    tmp_path: Path, text: str, line: int, field: str, problem: str
) -> None:
    error = refused(
        tmp_path, "upstreams:\n  - {name: a, base_url: 'http://a/v1', models: [mock]}\n" + text
    )
    assert (error.line, error.field) == (line, field), error
    assert problem in error.problem, error


@pytest.mark.parametrize(
    ("text", "line", "field", "problem"),
    [
        ("upstreams: []\n", 1, "upstreams", "empty: list at least one deployment"),
        ("upstreams: {}\n", 1, "upstreams", "expected a list of deployments, got a mapping"),
        ("upstreams:\n", 1, "upstreams", "expected a list of deployments, got nothing"),
        ("upstreams: [a]\n", 1, "upstreams[0]", "expected a mapping, got a string"),
        ("routing: {}\n", 1, "upstreams", "required, missing"),
        ("\n\nupstreams:\n  - name: a\n", 4, "upstreams[0].base_url", "required, missing"),
        ("upstreams:\n  - {}\n", 2, "upstreams[0].name", "required, missing"),
        ("- name: a\n", 1, None, "expected a mapping with 'upstreams', got a list"),
        ("just words\n", 1, None, "expected a mapping with 'upstreams', got a string"),
        ("", 1, None, "empty: expected a mapping with 'upstreams'"),
        ("# only a comment\n", 1, None, "empty"),
        ("!!map {upstreams: !!seq []}\n", 1, "upstreams", "empty"),  # the default tags
        ("1: a\n", 1, None, "keys must be strings, got an integer"),
        ("upstreams: !!set {a: null}\n", 1, "upstreams", "got a tagged mapping"),
        ("upstreams: !!omap [a: 1]\n", 1, "upstreams", "got a tagged list"),
        (
            "upstreams: [{name: a, base_url: 'http://a', weight: !!python/object:os.system x}]",
            1,
            "upstreams[0].weight",
            "got a tagged value",
        ),
        ("upstreams: [{name: a, base_url: !!binary aGk=}]", 1, "upstreams[0].base_url", "tagged"),
    ],
)
def test_the_file_shape(
    tmp_path: Path, text: str, line: int, field: str | None, problem: str
) -> None:
    error = refused(tmp_path, text)
    assert (error.line, error.field) == (line, field), error
    assert problem in error.problem, error


def test_duplicate_names(tmp_path: Path) -> None:
    error = refused(
        tmp_path,
        """\
        upstreams:
          - name: vllm-a
            base_url: http://a/v1
          - base_url: http://b/v1
            name: vllm-a
        """,
    )
    assert (error.line, error.field) == (5, "upstreams[1].name"), error
    assert error.problem == "duplicate name 'vllm-a' (first at line 2)"


def test_duplicate_keys(tmp_path: Path) -> None:
    """YAML keeps the last of two equal keys silently; a fleet file refuses the second."""
    error = refused(
        tmp_path,
        """\
        upstreams:
          - name: a
            base_url: http://a/v1
            weight: 1
            weight: 100
        """,
    )
    assert (error.line, error.field, error.problem) == (
        5,
        "upstreams[0].weight",
        "duplicate key (first at line 4)",
    )
    error = refused(tmp_path, "upstreams: []\nupstreams: []\n")
    assert (error.line, error.field) == (2, "upstreams"), error


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("upstreams:\n  - name: a\n   base_url: x\n", 3, "invalid YAML"),
        ("upstreams: [{name: a\n\n", 3, "invalid YAML"),
        ("upstreams:\n\t- name: a\n", 2, "invalid YAML"),
        ("a: 1\n---\nb: 2\n", 2, "expected a single document"),
        ("upstreams: 'unclosed\n", 2, "invalid YAML"),
        ("upstreams: [a]\nx: \x00\n", 2, "invalid YAML: a control character"),
    ],
)
def test_a_syntax_error_names_its_line(tmp_path: Path, text: str, line: int, problem: str) -> None:
    error = refused(tmp_path, text)
    assert (error.line, error.field) == (line, None), error
    assert problem in error.problem, error
    assert str(error) == f"{tmp_path / 'fleet.yaml'} line {line}: {error.problem}"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_bytes(b"upstreams:\n  - name: caf\xe9\n")
    with pytest.raises(FleetError) as caught:
        load_fleet(path, ENV)
    assert (caught.value.line, caught.value.problem) == (2, "not UTF-8 text")


def test_a_huge_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("# " + "x" * MAX_FILE_BYTES + "\nupstreams: [{name: a, base_url: 'http://a'}]")
    with pytest.raises(FleetError, match="over 1048576 bytes") as caught:
        load_fleet(path, ENV)
    assert caught.value.line is None
    assert str(caught.value) == f"{path}: over 1048576 bytes: not a fleet file"
    with pytest.raises(FleetError, match="over 1048576 bytes"):
        load_fleet(Path("/dev/zero"), ENV)  # endless, and its size says 0: reads are bounded
    # Just under the limit is parsed.
    body = "upstreams: [{name: a, base_url: 'http://a'}]\n"
    path.write_text("#" + "x" * (MAX_FILE_BYTES - len(body) - 2) + "\n" + body)
    assert path.stat().st_size == MAX_FILE_BYTES
    assert load_fleet(path, ENV).deployments[0].name == "a"


def test_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="cannot read it: No such file"):
        load_fleet(tmp_path / "missing.yaml", ENV)
    with pytest.raises(FleetError, match="cannot read it"):
        load_fleet(tmp_path, ENV)  # a directory


def test_aliases_are_refused(tmp_path: Path) -> None:
    laughs = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    laughs += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    error = refused(tmp_path, "\n".join([*laughs, "upstreams: *a9"]))
    assert (error.line, error.problem) == (2, "aliases (*name) are not allowed in a fleet file")
    error = refused(
        tmp_path,
        """\
        upstreams:
          - &one {name: a, base_url: 'http://a'}
          - *one
        """,
    )
    assert error.line == 3 and "aliases" in error.problem


def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    for depth in (20, 100_000):
        error = refused(tmp_path, "upstreams: " + "[" * depth + "]" * depth)
        assert error.line == 1 and "nested over 16 levels deep" in error.problem


# --- the values themselves ---------------------------------------------------------------


def test_the_values_are_frozen_and_hashable(tmp_path: Path) -> None:
    fleet = load(tmp_path, "upstreams: [{name: a, base_url: 'http://a', models: [m]}]")
    (only,) = fleet.deployments
    with pytest.raises(dataclasses.FrozenInstanceError):
        only.weight = 2.0  # type: ignore[misc]
    assert only.models is not None
    with pytest.raises(TypeError):
        only.models["m"] = "other"  # type: ignore[index]
    assert {only: 1}[Deployment("a", "http://a", None, {"m": "m"})] == 1
    assert Fleet([only], Routing(), {}).deployments == (only,)  # type: ignore[arg-type]


def test_single_fleet() -> None:
    fleet = single_fleet(
        "https://api.example.com/v1",
        SecretStr(SECRET),
        "/etc/ssl/private-ca.pem",
        first_token_timeout=7.5,
        early_headers=True,
    )
    (only,) = fleet.deployments
    assert only == Deployment(
        "default",
        "https://api.example.com/v1",
        SecretStr(SECRET),
        None,
        ca_bundle="/etc/ssl/private-ca.pem",
    )
    assert fleet.serving("any-model") == (only,)
    assert only.upstream_model("any-model") == "any-model"
    assert fleet.model_names() == []
    assert fleet.options("any-model") == RouteOptions(7.5, True)
    assert fleet.routing == Routing(first_token_timeout=7.5, early_headers=True)
    assert_no_secret(fleet)
    assert single_fleet("http://127.0.0.1:8009/v1", None, None).options("m") == RouteOptions()
    with pytest.raises(FleetError) as caught:
        single_fleet("http://user:sk-SECRET@a/v1", None, None)
    assert (
        str(caught.value)
        == "SLUICE_UPSTREAM_BASE_URL: no user or password in the URL (use api_key)"
    )
    assert "SECRET" not in repr(caught.value)
    assert caught.value.__cause__ is None
