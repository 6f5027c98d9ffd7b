"""Property-based fuzzing of the configuration schema (issue 21: "zero internal error exits"): whatever the
values of the known keys, ``config check`` and ``renew --dry-run`` end with a located error or work, never with
exit 70 ("internal error") and a traceback."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certkeeper.cli import main
from certkeeper.errors import EX_SOFTWARE

DURATION_KEYS = ("check_interval", "verify_timeout", "hook_timeout", "lock_timeout", "fleet_grace", "fleet_lease")
CA_DURATION_KEYS = ("lifetime", "root_lifetime", "intermediate_lifetime", "crl_next_update")

durations = st.one_of(
    st.builds(lambda n, u: f"{n}{u}", st.integers(min_value=0, max_value=10**15), st.sampled_from("smhd")),
    st.builds(lambda n, u: f"{n}{u}", st.floats(min_value=0, max_value=1e12, allow_nan=False), st.sampled_from("smhd")),
    st.sampled_from(["99999999999d", "1/3", "0/0", "1/0", "3/2", "-5m", "", " 12h ", "12 h", "1e9d", "nan s"]),
)
names = st.one_of(st.text(min_size=0, max_size=300), st.text(alphabet="abc.-_", min_size=1, max_size=300),
                  st.sampled_from([".", "..", "a" * 300, "mail", "x/y", "\0"]))
listens = st.one_of(st.text(max_size=40), st.sampled_from(["bad", ":", ":99999", "[::1]:9466", "1.2.3.4:-1",
                                                           "host name:1", "[::1:9466", ":0"]))
scalars: st.SearchStrategy[Any] = st.one_of(st.text(max_size=40), st.integers(min_value=-2**63, max_value=2**63 - 1),
                                            st.booleans(), st.floats(allow_nan=False))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=10), inner, max_size=3)),
                      max_leaves=6)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # TOML spells inf and -inf as Python does; NaN is never drawn
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


@st.composite
def configs(draw: st.DrawFn, state_dir: str) -> str:
    settings_table: dict[str, Any] = {"state_dir": state_dir}
    for key in draw(st.lists(st.sampled_from((*DURATION_KEYS, "renew_before")), unique=True, max_size=4)):
        settings_table[key] = draw(durations)
    if draw(st.booleans()):
        settings_table["metrics_listen"] = draw(listens)
    for key in draw(st.lists(st.sampled_from(["keep_versions", "concurrency", "hooks_dir", "node"]), unique=True,
                             max_size=2)):
        settings_table[key] = draw(values)
    issuer_name = draw(st.one_of(st.just("internal"), names))
    issuer: dict[str, Any] = {"type": draw(st.sampled_from(["ca", "ca", "nope"])), "ca_dir": f"{state_dir}/ca"}
    for key in draw(st.lists(st.sampled_from(CA_DURATION_KEYS), unique=True, max_size=2)):
        issuer[key] = draw(durations)
    certificate_name = draw(st.one_of(st.just("mail"), names))
    certificate: dict[str, Any] = {"issuer": draw(st.one_of(st.just(issuer_name), names)),
                                   "domains": draw(st.one_of(st.just(["mail.example.test"]),
                                                             st.lists(st.text(max_size=70), max_size=3), values))}
    for key in draw(st.lists(st.sampled_from(["renew_before", "verify_timeout", "key_types", "endpoints", "reload",
                                              "group", "copy_to", "reuse_key", "dane", "hook_env"]),
                             unique=True, max_size=3)):
        certificate[key] = draw(durations) if key in ("renew_before", "verify_timeout") else draw(values)
    lines = ["[certkeeper]", *(f"{k} = {toml_value(v)}" for k, v in settings_table.items()),
             f"[issuers.{json.dumps(issuer_name)}]", *(f"{k} = {toml_value(v)}" for k, v in issuer.items()),
             f"[certificates.{json.dumps(certificate_name)}]",
             *(f"{k} = {toml_value(v)}" for k, v in certificate.items())]
    return "\n".join(lines) + "\n"


def run(config: Path, *args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    logging.getLogger().addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(["-c", str(config), *args])
    finally:
        logging.getLogger().removeHandler(handler)
    return status, out.getvalue() + err.getvalue()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_configuration_ends_in_an_internal_error(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory(prefix="ck-fuzz-") as folder:
        config = Path(folder) / "certkeeper.toml"
        config.write_text(data.draw(configs(str(Path(folder) / "state"))))
        for command in (["config", "check"], ["renew", "--dry-run"]):
            status, output = run(config, *command)
            assert status != EX_SOFTWARE and "internal error" not in output, (command, config.read_text(), output)


def test_the_reported_reproductions_are_located_errors(tmp_path: Path) -> None:
    """The cases issue 21 found: each a config error naming the key (exit 78), not an internal error."""
    base = f'[certkeeper]\nstate_dir = "{tmp_path / "state"}"\n'
    cases = {
        'check_interval = "99999999999d"\n': "check_interval",
        'metrics_listen = "bad"\n': "metrics_listen",
        'renew_before = "0/0"\n': "renew_before",
        '[issuers.internal]\ntype = "ca"\nca_dir = "/nonexistent"\n'
        f'[certificates.{"a" * 300}]\nissuer = "internal"\ndomains = ["mail.example.test"]\n': "certificates",
    }
    for extra, key in cases.items():
        config = tmp_path / "certkeeper.toml"
        config.write_text(base + extra)
        status, output = run(config, "config", "check")
        assert status == 78 and key in output, (extra, output)


def test_a_configuration_file_that_never_ends_is_refused(tmp_path: Path) -> None:
    status, output = run(Path("/dev/zero"), "config", "check")
    assert status == 78 and "more than 1048576 bytes" in output, output
