"""MTA-STS policy text, TXT records, RFC 8461 section 4.1 matching and the widen-then-narrow order (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certkeeper.config import CertificateConfig, MtaStsConfig
from certkeeper.model import mx_pattern_problem as pattern_problem
from certkeeper.mtasts.guard import guard_certificate, mx_certificates, mx_names, wanted_policy
from certkeeper.mtasts.policy import (
    MAX_POLICY_BYTES,
    STS_POLICY_INVALID,
    Policy,
    matching_pattern,
    mx_matches,
    name_fits_patterns,
    parse_policy,
    parse_txt_records,
    policy_id,
    render_policy,
    render_tlsrpt,
    render_txt,
)
from certkeeper.mtasts.publish import PublishState
from certkeeper.mtasts.rollout import Publication, decide_publication, next_publication
from certkeeper.mtasts.status import domain_status
from certkeeper.targets import parse_target
from certkeeper.values import replace

T0 = datetime(2026, 1, 1, tzinfo=UTC)
WEEK = 604800

GOOD = b"version: STSv1\r\nmode: enforce\r\nmx: mail.example.org\r\nmx: *.backup.example.org\r\nmax_age: 604800\r\n"


def test_a_good_policy_parses_with_every_mx_pattern() -> None:
    parsed = parse_policy(GOOD)
    assert parsed.valid
    assert parsed.policy == Policy("enforce", WEEK, ("mail.example.org", "*.backup.example.org"))


def test_lf_line_ends_unknown_extensions_and_a_missing_final_newline_are_accepted() -> None:
    parsed = parse_policy(b"version: STSv1\nmode: testing\nmx:mail.example.org\nmax_age:86400\nfoo_ext: bar baz")
    assert parsed.valid
    assert parsed.policy == Policy("testing", 86400, ("mail.example.org",), (("foo_ext", "bar baz"),))


@pytest.mark.parametrize(("text", "says"), [
    (b"mode: enforce\nmx: a.example.org\nmax_age: 1\n", 'no "version: STSv1" line'),
    (b"version: STSv2\nmode: enforce\nmx: a.example.org\nmax_age: 1\n", "line 1: version 'STSv2', expected STSv1"),
    (b"version: STSv1\nmode: strict\nmx: a.example.org\nmax_age: 1\n", "line 2: mode 'strict', expected enforce"),
    (b"version: STSv1\nmode: enforce\nmx: a.example.org\n", 'no "max_age:" line'),
    (b"version: STSv1\nmode: enforce\nmx: a.example.org\nmax_age: 1w\n", "line 4: max_age '1w' is not a number"),
    (b"version: STSv1\nmode: enforce\nmx: a.example.org\nmax_age: 31557601\n", "more than 31557600"),
    (b"version: STSv1\nmode: enforce\nmax_age: 60\n", "mode enforce without any \"mx:\" line"),
    (b"version: STSv1\nmode: enforce\nmx: mail.*.example.org\nmax_age: 60\n", "line 3: mx 'mail.*.example.org'"),
    (b"version: STSv1\nmode: enforce\nmx: a.example.org\n\nmax_age: 60\n", "line 4: an empty line"),
    (b"version: STSv1\nmode enforce\nmx: a.example.org\nmax_age: 60\n", "line 2: 'mode enforce' is not"),
    (b"version: STSv1\nmode: enforce\nmode: none\nmx: a.example.org\nmax_age: 60\n", "line 3: mode given again"),
    (b"<html><body>Not found</body></html>\n", "is not a \"key: value\" pair"),
    (b"version: STSv1\nmode: enforce\nmx: \xff\xfe\nmax_age: 60\n", "not UTF-8"),
])
def test_each_syntax_error_is_a_finding_naming_the_line(text: bytes, says: str) -> None:
    parsed = parse_policy(text)
    assert not parsed.valid
    assert all(f.code == STS_POLICY_INVALID for f in parsed.findings)
    assert any(says in str(f) for f in parsed.findings), [str(f) for f in parsed.findings]


def test_an_oversized_policy_is_refused_whole_without_decoding_it() -> None:
    parsed = parse_policy(GOOD + b"x" * MAX_POLICY_BYTES)
    assert parsed.policy is None
    assert "larger than 64 KiB" in str(parsed.findings[0])


def test_render_then_parse_gives_the_policy_back_and_crlf_lines() -> None:
    policy = Policy("enforce", WEEK, ("mail.example.org", "*.example.net"))
    text = render_policy(policy)
    assert text == "version: STSv1\r\nmode: enforce\r\nmx: mail.example.org\r\nmx: *.example.net\r\nmax_age: 604800\r\n"
    assert parse_policy(text.encode()).policy == policy


def test_the_id_changes_with_the_text_and_only_then() -> None:
    a = render_policy(Policy("testing", WEEK, ("mail.example.org",)))
    b = render_policy(Policy("enforce", WEEK, ("mail.example.org",)))
    assert policy_id(a) == policy_id(a) and policy_id(a) != policy_id(b)
    assert render_txt(a) == f"v=STSv1; id={policy_id(a)}"
    record, findings = parse_txt_records([render_txt(a)])
    assert record is not None and record.id == policy_id(a) and not findings


@pytest.mark.parametrize(("records", "says"), [
    ([], 'no TXT record starting with "v=STSv1;"'),
    (["v=spf1 -all"], 'no TXT record starting with "v=STSv1;"'),
    (["v=STSv1; id=1", "v=STSv1; id=2"], "2 TXT records"),
    (["v=STSv1;"], "no id field"),
    (["v=STSv1; id=not-alnum!"], "is not 1 to 32 letters and digits"),
    (["v=STSv1; id=" + "a" * 33], "is not 1 to 32 letters and digits"),
])
def test_bad_txt_records_are_findings(records: list[str], says: str) -> None:
    record, findings = parse_txt_records(records)
    assert record is None
    assert any(says in str(f) for f in findings), [str(f) for f in findings]


def test_other_txt_records_beside_the_sts_one_are_ignored() -> None:
    record, _ = parse_txt_records(["v=spf1 -all", "v=STSv1; id=20260101T000000; ext=1"])
    assert record is not None and record.id == "20260101T000000" and record.extensions == (("ext", "1"),)


def test_tlsrpt_record_lists_every_rua() -> None:
    assert render_tlsrpt(["mailto:tls@example.org", "https://r.example.org/v1"]) == \
        "v=TLSRPTv1; rua=mailto:tls@example.org,https://r.example.org/v1"


@pytest.mark.parametrize(("pattern", "host", "matches"), [
    ("mail.example.com", "mail.example.com", True),
    ("mail.example.com", "MAIL.Example.com.", True),
    ("mail.example.com", "mx.example.com", False),
    ("*.example.com", "mail.example.com", True),
    ("*.example.com", "example.com", False),  # section 4.1: exactly one label
    ("*.example.com", "foo.bar.example.com", False),
    ("*.example.com", "mailexample.com", False),
])
def test_rfc_8461_section_4_1_examples(pattern: str, host: str, matches: bool) -> None:
    assert mx_matches(pattern, host) is matches


def test_wildcard_certificate_names_fit_wildcard_and_covered_plain_patterns() -> None:
    assert name_fits_patterns("*.example.com", ["*.example.com"])
    assert name_fits_patterns("*.example.com", ["mail.example.com"])
    assert not name_fits_patterns("*.example.com", ["mail.other.example.com"])
    assert not name_fits_patterns("mx.example.net", ["mail.example.com", "*.example.org"])


@pytest.mark.parametrize("pattern", ["", "*", "*.", "a*.example.org", "mail.*.org", "-a.example.org", "host",
                                     "ünïcode.example.org", "a..example.org"])
def test_invalid_mx_patterns_are_named(pattern: str) -> None:
    assert pattern_problem(pattern)


labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)
hosts = st.lists(labels, min_size=2, max_size=5).map(".".join)


@given(hosts)
def test_a_host_matches_itself_and_its_parents_wildcard(host: str) -> None:
    assert mx_matches(host, host)
    parent = host.partition(".")[2]
    assert mx_matches("*." + parent, host)
    assert not mx_matches("*." + host, host)


@given(labels, hosts)
def test_a_wildcard_matches_exactly_one_more_label(extra: str, host: str) -> None:
    pattern = "*." + host.split(".", 1)[1]
    assert mx_matches(pattern, host)
    assert not mx_matches(pattern, extra + "." + host)
    assert not mx_matches(pattern, host.split(".", 1)[1])


policies = st.builds(
    Policy,
    mode=st.sampled_from(["enforce", "testing"]),
    max_age=st.integers(0, 31_557_600),
    mx=st.lists(st.one_of(hosts, hosts.map(lambda h: "*." + h)), min_size=1, max_size=6, unique=True).map(tuple),
)


@given(policies)
def test_rendered_policies_always_parse_back(policy: Policy) -> None:
    parsed = parse_policy(render_policy(policy).encode())
    assert parsed.valid and parsed.policy == policy


@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_crash_and_an_unusable_policy_always_says_why(data: bytes) -> None:
    parsed = parse_policy(data)
    assert parsed.valid or parsed.findings


@given(policies, policies, st.integers(0, 4 * WEEK))
def test_every_host_published_before_stays_published_until_the_wait_is_over(old: Policy, new: Policy,
                                                                            elapsed: int) -> None:
    """The safe order: a pattern leaves the policy only after the wider one was out for max_age."""
    current = Publication(old, T0, T0)
    now = T0 + timedelta(seconds=elapsed)
    decision = decide_publication(current, new, now)
    assert set(new.mx) <= set(decision.policy.mx)  # wanted patterns are published at once
    if elapsed < old.max_age:
        assert set(old.mx) <= set(decision.policy.mx)  # nothing dropped early


def test_a_move_widens_with_a_new_id_then_narrows_after_max_age() -> None:
    old = Policy("enforce", WEEK, ("mail.example.org",))
    new = Policy("enforce", WEEK, ("mx2.example.org",))
    first = decide_publication(Publication(old, T0, T0), new, T0)
    assert first.policy.mx == ("mail.example.org", "mx2.example.org")
    assert first.narrow_at == T0 + timedelta(seconds=WEEK)
    assert policy_id(render_policy(first.policy)) != policy_id(render_policy(old))
    state = next_publication(Publication(old, T0, T0), first, T0)
    waiting = decide_publication(state, new, T0 + timedelta(days=6))
    assert waiting.policy == first.policy and waiting.pending
    done = decide_publication(state, new, T0 + timedelta(days=7))
    assert done.policy == new and not done.pending


def test_mode_none_is_published_at_once() -> None:
    old = Policy("enforce", WEEK, ("mail.example.org",))
    assert decide_publication(Publication(old, T0, T0), Policy("none", WEEK), T0).policy.mode == "none"


def test_matching_pattern_names_the_first_that_matches() -> None:
    assert matching_pattern("mx.example.org", ["a.example.org", "*.example.org", "mx.example.org"]) == \
        "*.example.org"


# -- which certificates face senders, the wanted policy, the guard -------------------------------------------

def _certificate(name: str, domains: tuple[str, ...], endpoints: tuple[str, ...] = ()) -> CertificateConfig:
    return CertificateConfig(name, "ca", domains, endpoints=tuple(parse_target(e) for e in endpoints))


MAIL = _certificate("mail", ("mail.example.org", "imap.example.org"),
                    ("smtp://mail.example.org:25", "imaps://imap.example.org:993"))
WEB = _certificate("web", ("mta-sts.example.org",), ("https://mta-sts.example.org:443",))
CERTIFICATES = {"mail": MAIL, "web": WEB}


def test_the_mx_patterns_default_to_the_port_25_endpoints_of_the_mx_certificates() -> None:
    mta = MtaStsConfig("example.org", mode="enforce", webroot=Path("/var/www/mta-sts"))
    assert [c.name for c in mx_certificates(mta, CERTIFICATES)] == ["mail"]
    assert wanted_policy(mta, CERTIFICATES) == Policy("enforce", 604800, ("mail.example.org",))
    assert wanted_policy(replace(mta, mx=("*.example.org",)), CERTIFICATES).mx == ("*.example.org",)
    assert wanted_policy(replace(mta, mode="none"), CERTIFICATES).mx == ()


def test_a_certificate_without_port_25_endpoints_faces_senders_with_its_domains() -> None:
    bare = _certificate("mx", ("mx1.example.org", "10.0.0.1"), ("smtp://10.0.0.1:25",))
    assert mx_names(bare) == ("mx1.example.org",)


def test_the_guard_refuses_a_name_outside_the_published_patterns_and_names_both() -> None:
    published = Policy("enforce", WEEK, ("mx.example.org",))
    refusal = guard_certificate(MAIL, ["mail.example.org"], "example.org", published, "abc")
    assert refusal is not None and refusal.name == "mail.example.org"
    assert "mail.example.org matches none of the mx patterns (mx.example.org)" in str(refusal)
    assert guard_certificate(MAIL, ["mail.example.org"], "example.org",
                             Policy("enforce", WEEK, ("*.example.org",)), "abc") is None
    assert guard_certificate(MAIL, ["mail.example.org"], "example.org", None, "") is None  # nothing published
    assert guard_certificate(MAIL, ["mail.example.org"], "example.org", Policy("none", WEEK), "x") is None


def test_the_guard_refuses_a_certificate_that_no_longer_covers_the_mx_host() -> None:
    refusal = guard_certificate(MAIL, ["imap.example.org"], "example.org",
                                Policy("enforce", WEEK, ("mail.example.org",)), "abc")
    assert refusal is not None and not refusal.covered and "does not cover the MX host mail.example.org" in \
        str(refusal)


def test_status_says_which_mx_names_do_not_match_the_published_policy() -> None:
    mta = MtaStsConfig("example.org", mode="enforce", webroot=Path("/var/www/mta-sts"))
    published = PublishState(Publication(Policy("enforce", WEEK, ("mx.example.org",)), T0, T0), "x", None)
    status = domain_status(mta, CERTIFICATES, {"mail": ["mail.example.org"]}, published)
    assert (status.every_mx_matches, status.unmatched, status.txt_in_step) == (False, ("mail.example.org",), False)
    good = PublishState(Publication(Policy("enforce", WEEK, ("*.example.org",)), T0, T0))
    assert domain_status(mta, CERTIFICATES, {"mail": ["mail.example.org"]}, good).every_mx_matches
    assert not domain_status(mta, CERTIFICATES, {}, good).every_mx_matches  # nothing installed yet
    assert domain_status(mta, CERTIFICATES, {}, PublishState()).policy_id is None
