"""Configuration validation: every mistake is named by its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import NuonuoHmacAuthConfig, load_config, parse_config, parse_yaml
from gateway.errors import ConfigError
from tests.support.processes import ROOT

ENV = {
    "GATEWAY_DEMO_API_KEY": "k",
    "NUONUO_APP_KEY": "ak",
    "NUONUO_APP_SECRET": "sk",
    "NUONUO_USER_TAX": "91110000000000000X",
}


def default_raw() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text()))


def problems(raw: Any, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, ENV if environ is None else environ)
    return caught.value.problems


def test_default_profile_is_valid() -> None:
    """config/gateway.yaml loads and classifies all four reference operations."""
    config = load_config(ROOT / "config" / "gateway.yaml", ENV)
    kinds = {op.name: op.kind for op in config.operations}
    assert {
        "nuonuo.OpeMplatform.requestBillingNew": "submit",
        "nuonuo.OpeMplatform.fastInvoiceRed": "submit",
        "nuonuo.OpeMplatform.queryInvoiceResult": "read",
        "nuonuo.electronInvoice.invoiceInspection": "read",
    } == kinds
    assert isinstance(config.upstream.auth, NuonuoHmacAuthConfig)
    assert "sk" == config.upstream.auth.app_secret.value()


def test_sandbox_profile_is_valid() -> None:
    """config/sandbox.yaml loads: the sandbox's API host, tokens from the platform's token host,
    and the default profile's operations."""
    config = load_config(ROOT / "config" / "sandbox.yaml", ENV)
    auth = config.upstream.auth
    assert isinstance(auth, NuonuoHmacAuthConfig)
    assert ("https://sandbox.nuonuocs.cn", "https://open.nuonuo.com/accessToken") == (
        config.upstream.url,
        auth.token_endpoint(config.upstream.url),
    )
    default = load_config(ROOT / "config" / "gateway.yaml", ENV)
    assert {op.name: op.kind for op in default.operations} == {
        op.name: op.kind for op in config.operations
    }


def test_electron_invoice_profile_is_valid() -> None:
    """config/electron-invoice.yaml loads: the ElectronInvoice line's operations with their
    business and ordering keys, a red-letter never keyed apart from what it reverses."""
    config = load_config(ROOT / "config" / "electron-invoice.yaml", ENV)
    keys = {
        op.name: (
            op.kind,
            op.business_key and op.business_key.text,
            op.ordering_key and op.ordering_key.text,
            op.reconcile is not None,
        )
        for op in config.operations
    }
    assert {
        "nuonuo.ElectronInvoice.requestBillingNew:red": (
            "submit",
            "/order/orderNo",
            "/order/invoiceNum",
            True,
        ),
        "nuonuo.ElectronInvoice.requestBillingNew": (
            "submit",
            "/order/orderNo",
            "/order/orderNo",
            True,
        ),
        "nuonuo.ElectronInvoice.unifiedfastInvoiceRed": (
            "submit",
            "/orderNo",
            "/originalOrderNo",
            True,
        ),
        "nuonuo.ElectronInvoice.queryInvoiceResult": ("read", None, None, False),
        "nuonuo.electronInvoice.invoiceInspection": ("read", None, None, False),
    } == keys
    lookups = {op.reconcile.lookup for op in config.operations if op.reconcile is not None}
    assert {"nuonuo.ElectronInvoice.queryInvoiceResult"} == lookups
    assert config.resilience.probe is not None
    assert "nuonuo.ElectronInvoice.queryInvoiceResult" == config.resilience.probe.operation


#: What a profile may choose for itself; everything else is shared by all profiles.
PROFILE_OWN = ("operations", "store_url")


def shared_sections(profile: str) -> dict[str, Any]:
    """A profile as written, without what it may choose for itself (the probe's operation and
    body included, as they name one of its operations)."""
    raw = dict(yaml.safe_load((ROOT / "config" / profile).read_text()))
    for key in PROFILE_OWN:
        raw.pop(key)
    probe = raw["resilience"]["probe"]
    del probe["operation"], probe["body"]
    return raw


def test_electron_invoice_profile_shares_everything_else_with_the_default_profile() -> None:
    """The two product lines' profiles differ only in their operations, probe operation and
    store: upstream, auth (token URL included), business codes, resilience and outbox are kept
    equal, so a change to one that is not made to the other fails here."""
    assert shared_sections("gateway.yaml") == shared_sections("electron-invoice.yaml")


def test_default_profile_asks_the_token_host_for_tokens() -> None:
    """The default profile's tokens come from the platform's token host, not the API host."""
    config = load_config(ROOT / "config" / "gateway.yaml", ENV)
    auth = config.upstream.auth
    assert isinstance(auth, NuonuoHmacAuthConfig)
    assert "https://open.nuonuo.com/accessToken" == auth.token_endpoint(config.upstream.url)


def test_without_a_token_url_tokens_come_from_below_the_api_url() -> None:
    """An unset `token_url` means `upstream.url` + `token_path`, as before it existed."""
    raw = default_raw()
    del raw["upstream"]["auth"]["token_url"]
    raw["upstream"]["url"] = "http://127.0.0.1:9000"
    auth = parse_config(raw, ENV).upstream.auth
    assert isinstance(auth, NuonuoHmacAuthConfig)
    assert "http://127.0.0.1:9000/accessToken" == auth.token_endpoint("http://127.0.0.1:9000")


def test_token_url_must_be_absolute() -> None:
    """A token URL without a scheme and host is named as a problem, with an example."""
    raw = default_raw()
    raw["upstream"]["auth"]["token_url"] = "/accessToken"
    [problem] = problems(raw)
    assert problem.startswith("upstream.auth.token_url: expected an absolute http(s) URL")


def test_token_call_caps_must_nest() -> None:
    """A daily cap below the hourly one is a contradiction, named by its key."""
    raw = default_raw()
    raw["upstream"]["auth"]["token_calls"] = {"per_hour": 10, "per_day": 5}
    [problem] = problems(raw)
    assert "upstream.auth.token_calls: per_day (5) must be at least per_hour (10)" == problem


def test_unknown_key_is_an_error_with_a_suggestion() -> None:
    """A typo'd key is rejected, naming the key and the likely intended one."""
    raw = default_raw()
    raw["upstream"]["timout"] = "3s"
    assert ["upstream.timout: unknown key (did you mean 'timeout'?)"] == problems(raw)


def test_unknown_top_level_key() -> None:
    """Unknown keys at the top level are errors too."""
    raw = default_raw()
    raw["listne"] = "0.0.0.0:1"
    assert ["listne: unknown key (did you mean 'listen'?)"] == problems(raw)


def test_bad_type_names_key_and_value() -> None:
    """A value of the wrong type names the key and what was given."""
    raw = default_raw()
    raw["limits"]["max_body_bytes"] = "lots"
    [problem] = problems(raw)
    assert problem.startswith("limits.max_body_bytes: ")
    assert "'lots'" in problem


def test_bad_enum_value() -> None:
    """An operation kind outside submit/read/passthrough is rejected."""
    raw = default_raw()
    raw["operations"][0]["kind"] = "write"
    [problem] = problems(raw)
    assert problem.startswith("operations[0].kind: ")


def test_missing_secret_env_var_is_named() -> None:
    """A secret whose environment variable is unset names both the key and the variable."""
    environ = {k: v for k, v in ENV.items() if k != "NUONUO_APP_SECRET"}
    assert ["upstream.auth.app_secret: environment variable NUONUO_APP_SECRET is not set"] == (
        problems(default_raw(), environ)
    )


def test_literal_secret_is_refused() -> None:
    """Secrets are never literal in the file."""
    raw = default_raw()
    raw["upstream"]["auth"]["app_secret"] = "hunter2"
    [problem] = problems(raw)
    assert problem.startswith("upstream.auth.app_secret: secrets are never literal")


def test_secret_from_file(tmp_path: Path) -> None:
    """A secret can be read from a file, trimmed of its newline."""
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    raw = default_raw()
    raw["upstream"]["auth"]["app_secret"] = {"file": str(secret)}
    config = parse_config(raw, ENV)
    assert isinstance(config.upstream.auth, NuonuoHmacAuthConfig)
    assert "from-file" == config.upstream.auth.app_secret.value()


def test_missing_secret_file(tmp_path: Path) -> None:
    """An unreadable secret file is reported with its path."""
    raw = default_raw()
    raw["upstream"]["auth"]["app_secret"] = {"file": str(tmp_path / "nope")}
    [problem] = problems(raw)
    assert problem.startswith(f"upstream.auth.app_secret: cannot read file {tmp_path / 'nope'}")


def test_env_overrides_apply() -> None:
    """GATEWAY_* variables override the file."""
    environ = {
        **ENV,
        "GATEWAY_LISTEN": "127.0.0.1:9999",
        "GATEWAY_ADMIN_LISTEN": "127.0.0.1:9998",
        "GATEWAY_STORE_URL": "sqlite:////tmp/x.db",
        "GATEWAY_UPSTREAM_URL": "http://127.0.0.1:1234/base/",
        "GATEWAY_TOKEN_URL": "http://127.0.0.1:1235/accessToken",
        "GATEWAY_ADMIN_TOKEN": "admintoken",
        "GATEWAY_LOG_LEVEL": "warning",
    }
    config = parse_config(default_raw(), environ)
    assert "warning" == config.log.level
    assert isinstance(config.upstream.auth, NuonuoHmacAuthConfig)
    assert "http://127.0.0.1:1235/accessToken" == config.upstream.auth.token_url
    assert "127.0.0.1:9999" == config.listen
    assert "127.0.0.1:9998" == config.admin.listen
    assert "sqlite:////tmp/x.db" == config.store_url
    assert "http://127.0.0.1:1234/base" == config.upstream.url
    assert [("env", "operator", "admintoken")] == [
        (t.name, t.role, t.token.value()) for t in config.admin.tokens
    ]


def test_a_bad_log_level_from_the_environment_names_the_variable_s_key() -> None:
    """GATEWAY_LOG_LEVEL=loud is refused like the same value in the file, naming `log.level`."""
    [problem] = problems(default_raw(), {**ENV, "GATEWAY_LOG_LEVEL": "loud"})
    assert problem.startswith("log.level:"), problem


def test_shutdown_needs_time_after_the_drain_delay() -> None:
    """A drain delay as long as the grace period would leave in-flight work no time: refused,
    naming both settings. The defaults: no delay, 25 s of grace."""
    raw = default_raw()
    raw["shutdown"] = {"drain_delay": "30s", "grace_period": "30s"}
    [problem] = problems(raw)
    assert "drain_delay (30 s) must be shorter than grace_period (30 s)" in problem
    config = parse_config(default_raw(), ENV)
    assert (0.0, 25.0) == (config.shutdown.drain_delay, config.shutdown.grace_period)


def test_durations_accept_units() -> None:
    """Durations may be plain seconds or carry a unit."""
    raw = default_raw()
    raw["upstream"]["timeout"] = "250ms"
    raw["upstream"]["connect_timeout"] = 2
    config = parse_config(raw, ENV)
    assert 0.25 == config.upstream.timeout
    assert 2.0 == config.upstream.connect_timeout


def test_bad_duration() -> None:
    """A duration that cannot be parsed says how to write one."""
    raw = default_raw()
    raw["upstream"]["timeout"] = "soon"
    [problem] = problems(raw)
    assert "upstream.timeout: not a duration: 'soon'" in problem


def test_bad_upstream_url() -> None:
    """The upstream must be an http(s) URL."""
    raw = default_raw()
    raw["upstream"]["url"] = "ftp://example.com"
    [problem] = problems(raw)
    assert problem.startswith("upstream.url: expected an http(s) URL")


def test_duplicate_operation_names() -> None:
    """Two operations with one name are ambiguous and rejected."""
    raw = default_raw()
    raw["operations"].append(raw["operations"][0])
    [problem] = problems(raw)
    assert "duplicate names ['nuonuo.OpeMplatform.requestBillingNew']" in problem


def test_bad_json_pointer() -> None:
    """A business key must be a JSON pointer."""
    raw = default_raw()
    raw["operations"][0]["business_key"] = "order.orderNo"
    [problem] = problems(raw)
    assert problem.startswith("operations[0].business_key: ")


def test_missing_required_section() -> None:
    """A config without an upstream says so."""
    raw = default_raw()
    del raw["upstream"]
    assert ["upstream: required key is missing"] == problems(raw)


def test_top_level_must_be_mapping() -> None:
    """A YAML list at the top level is refused with a clear message."""
    [problem] = problems(["not", "a", "mapping"])
    assert "the top level must be a mapping" in problem


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    """Broken YAML is reported with its line."""
    path = tmp_path / "bad.yaml"
    path.write_text("listen: 1\nupstream: [\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, ENV)
    assert "not valid YAML at line" in caught.value.problems[0]


def test_store_urls() -> None:
    """SQLite paths and PostgreSQL URLs are stores; anything else is refused with the forms."""
    for url in ("postgresql://gw@db:5432/gateway", "postgres://db/gateway", "sqlite:///x.db"):
        raw = default_raw()
        raw["store_url"] = url
        assert url == parse_config(raw, ENV).store_url
    raw = default_raw()
    raw["store_url"] = "mysql://db/gateway"
    [problem] = problems(raw)
    assert problem.startswith("store_url: expected sqlite:///PATH or postgresql://")


# -- a key written twice ------------------------------------------------------------------------

TWICE = "a key may appear once in a mapping (YAML would silently keep only the last)"


def repeated(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_yaml(text)
    return caught.value.problems


def test_default_profile_has_no_key_written_twice() -> None:
    """config/gateway.yaml reads the same through the strict loader as through PyYAML."""
    text = (ROOT / "config" / "gateway.yaml").read_text()
    assert yaml.safe_load(text) == parse_yaml(text)


def test_repeated_nested_key_names_its_dotted_key_and_both_lines() -> None:
    """A key written twice deep in the document is named by its dotted key and both lines."""
    text = "upstream:\n  url: http://a\n  auth:\n    scheme: none\n    scheme: nuonuo-hmac\n"
    assert [f"upstream.auth.scheme: written twice, at lines 4 and 5; {TWICE}"] == repeated(text)


def test_repeated_key_in_a_mapping_inside_a_list() -> None:
    """A mapping in a list is named by its index, e.g. operations[1].reconcile.answer."""
    text = (
        "operations:\n"
        "  - name: a\n"
        "  - name: b\n"
        "    reconcile:\n"
        "      answer: {code: E0000}\n"
        "      lookup: q\n"
        "      answer: {code: E0001}\n"
    )
    assert [
        f"operations[1].reconcile.answer: written twice, at lines 5 and 7; {TWICE}"
    ] == repeated(text)


def test_every_repeated_key_is_listed_in_document_order() -> None:
    """One run lists each repeated key, top level included, and a third occurrence too."""
    text = "listen: a\nlog: {level: info, level: debug}\nlisten: b\nlisten: c\n"
    assert [
        f"listen: written 3 times, at lines 1, 3 and 4; {TWICE}",
        f"log.level: written twice, at lines 2 and 2; {TWICE}",
    ] == repeated(text)


def test_keys_that_load_as_the_same_value_are_repeated() -> None:
    """`on` and `true` are one key once loaded, so one would silently replace the other."""
    assert [f"flags.on: written twice, at lines 2 and 3; {TWICE}"] == repeated(
        "flags:\n  on: 1\n  true: 2\n"
    )


def test_keys_that_only_look_alike_are_not_repeated() -> None:
    """`1` and `"1"` are different keys, and so are the same key in two mappings."""
    assert {"a": {1: "x", "1": "y"}, "b": {1: "z"}} == parse_yaml('a: {1: x, "1": y}\nb: {1: z}\n')


def test_merged_keys_may_be_overridden() -> None:
    """A key brought in by a merge (`<<`) is overridden by the mapping's own, as YAML says."""
    text = "base: &base {level: info, format: json}\nlog:\n  <<: *base\n  level: debug\n"
    assert {"level": "debug", "format": "json"} == parse_yaml(text)["log"]


def test_load_config_refuses_a_repeated_key(tmp_path: Path) -> None:
    """`load_config` reports a repeated key like any other problem, before validating."""
    path = tmp_path / "twice.yaml"
    text = (ROOT / "config" / "gateway.yaml").read_text()
    path.write_text(
        text.replace("unmatched: passthrough\n", "unmatched: passthrough\nunmatched: reject\n")
    )
    line = text.splitlines().index("unmatched: passthrough") + 1
    with pytest.raises(ConfigError) as caught:
        load_config(path, ENV)
    assert [f"unmatched: written twice, at lines {line} and {line + 1}; {TWICE}"] == (
        caught.value.problems
    )


def test_red_letter_reconciled_answer_is_its_own_not_the_issues() -> None:
    """Regression: the red-letter's `answer` sat twice in the issue's rule; each has its own."""
    config = load_config(ROOT / "config" / "gateway.yaml", ENV)
    described = {
        op.name: op.reconcile.answer["describe"]
        for op in config.operations
        if op.reconcile is not None
    }
    assert {
        "nuonuo.OpeMplatform.requestBillingNew": "开票提交成功（网关对账确认）",
        "nuonuo.OpeMplatform.fastInvoiceRed": "红冲提交成功（网关对账确认）",
    } == described


def test_backup_url_is_off_by_default_and_set_by_its_variable() -> None:
    """No backup endpoint unless `upstream.backup_url` (or GATEWAY_UPSTREAM_BACKUP_URL) names
    one; the variable overrides the file, as GATEWAY_UPSTREAM_URL does."""
    assert parse_config(default_raw(), ENV).upstream.backup_url is None
    environ = {**ENV, "GATEWAY_UPSTREAM_BACKUP_URL": "https://sdk2.nuonuo.com/"}
    assert "https://sdk2.nuonuo.com" == parse_config(default_raw(), environ).upstream.backup_url


def test_backup_url_must_be_another_address() -> None:
    """The backup is the primary written again: refused (case and a trailing slash aside)."""
    raw = default_raw()
    raw["upstream"]["backup_url"] = "https://SDK.nuonuo.com/"
    [problem] = problems(raw)
    assert problem.startswith("upstream: backup_url must be another address than url"), problem


@pytest.mark.parametrize(
    ("url", "backup", "problem"),
    [
        ("https://sdk.nuonuo.com", "http://sdk2.nuonuo.com", "must use https like url does"),
        ("https://sdk.nuonuo.com", "ftp://sdk2.nuonuo.com", "expected an http(s) URL"),
    ],
)
def test_backup_url_follows_the_rules_of_url(url: str, backup: str, problem: str) -> None:
    """The backup is an http(s) URL like `url`, and https when `url` is; http only where `url`
    is http (a local simulator)."""
    raw = default_raw()
    raw["upstream"].update(url=url, backup_url=backup)
    [found] = problems(raw)
    assert problem in found, found
    raw["upstream"].update(url="http://127.0.0.1:9000", backup_url="http://127.0.0.1:9001")
    assert "http://127.0.0.1:9001" == parse_config(raw, ENV).upstream.backup_url


def test_failover_of_submissions_is_for_submits_with_a_backup() -> None:
    """`failover: submissions` is off by default; on a read it is refused (reads fail over
    anyway), and without a backup endpoint it would do nothing, so it is refused too."""
    raw = default_raw()
    assert [None] * 4 == [op.failover for op in parse_config(raw, ENV).operations]
    raw["operations"][3]["failover"] = "submissions"
    [problem] = problems(raw)
    assert problem.startswith("operations[3]: failover: 'submissions' is for 'submit'"), problem
    del raw["operations"][3]["failover"]
    raw["operations"][0]["failover"] = "submissions"
    [problem] = problems(raw)
    assert "needs upstream.backup_url" in problem, problem
    raw["upstream"]["backup_url"] = "https://sdk2.nuonuo.com"
    assert "submissions" == parse_config(raw, ENV).operations[0].failover


SDK_ENV = {**ENV, "GATEWAY_DEMO_SDK_APP_KEY": "sk1", "GATEWAY_DEMO_SDK_APP_SECRET": "ss1"}


def test_the_demo_tenants_sdk_client_is_optional_in_the_default_profile() -> None:
    """Without its two variables the demo tenant has no SDK client (the profile still loads);
    with them it has, its secrets resolved; with one of them it is a problem naming the other."""
    assert parse_config(default_raw(), ENV).tenants[0].sdk_client is None
    [demo] = parse_config(default_raw(), SDK_ENV).tenants
    assert demo.sdk_client is not None
    assert ("sk1", "ss1", "platform") == (
        demo.sdk_client.app_key.value(),
        demo.sdk_client.app_secret.value(),
        demo.answers,
    )
    half = {**ENV, "GATEWAY_DEMO_SDK_APP_KEY": "sk1"}
    assert [
        "tenants[0].sdk_client.app_secret: environment variable GATEWAY_DEMO_SDK_APP_SECRET is "
        "not set"
    ] == problems(default_raw(), half)


def test_a_required_sdk_client_needs_its_variables_and_a_key_of_its_own() -> None:
    raw = default_raw()
    del raw["tenants"][0]["sdk_client"]["optional"]
    assert 2 == len(problems(raw))
    raw["tenants"].append(
        {"id": "acme", "sdk_client": raw["tenants"][0]["sdk_client"], "answers": "gateway"}
    )
    [problem] = problems(raw, SDK_ENV)
    assert problem.startswith("tenants[1].sdk_client.app_key: the same key as tenants[0]'s")
