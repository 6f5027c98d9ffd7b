"""Registered domains by the Public Suffix List's algorithm: the list's own test cases (publicsuffix.org's
``test_psl.txt`` shape) on a small list written here, the same on Debian's list, and properties."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certkeeper.public_suffix import (
    SYSTEM_LIST,
    SuffixList,
    ascii_name,
    load_suffix_list,
    parse_suffix_list,
    registered_domain,
)

# The rules the cases below need, as the list writes them (comments, a rule ended by white space, Unicode).
RULES = parse_suffix_list("""\
// ===BEGIN ICANN DOMAINS===
com
biz
uk
co.uk
ac
jp
ac.jp
kyoto.jp
ide.kyoto.jp
*.kobe.jp
!city.kobe.jp
*.mm
*.ck
!www.ck
us
ak.us
k12.ak.us
cn
com.cn
公司.cn
中国
// ===END ICANN DOMAINS===
// ===BEGIN PRIVATE DOMAINS===
uk.com   the rest of the line is not the rule
// ===END PRIVATE DOMAINS===
""")

CASES = [
    ("COM", None), ("example.COM", "example.com"), ("WwW.example.COM", "example.com"),  # mixed case
    (".com", None), (".example", None), (".example.com", None), ("a..example.com", None),  # empty labels
    ("example", None), ("example.example", "example.example"), ("b.example.example", "example.example"),  # no rule
    ("biz", None), ("domain.biz", "domain.biz"), ("b.domain.biz", "domain.biz"),
    ("uk.com", None), ("example.uk.com", "example.uk.com"), ("b.example.uk.com", "example.uk.com"),
    ("a.b.example.co.uk", "example.co.uk"), ("new.blog.example.co.uk", "example.co.uk"), ("test.ac", "test.ac"),
    ("mm", None), ("c.mm", None), ("b.c.mm", "b.c.mm"), ("a.b.c.mm", "b.c.mm"),  # only a wildcard rule
    ("test.jp", "test.jp"), ("www.test.jp", "test.jp"), ("ac.jp", None), ("www.test.ac.jp", "test.ac.jp"),
    ("kyoto.jp", None), ("ide.kyoto.jp", None), ("b.ide.kyoto.jp", "b.ide.kyoto.jp"),
    ("a.b.ide.kyoto.jp", "b.ide.kyoto.jp"), ("c.kobe.jp", None), ("a.b.c.kobe.jp", "b.c.kobe.jp"),
    ("city.kobe.jp", "city.kobe.jp"), ("www.city.kobe.jp", "city.kobe.jp"),  # an exception to a wildcard
    ("ck", None), ("test.ck", None), ("b.test.ck", "b.test.ck"), ("a.b.test.ck", "b.test.ck"),
    ("www.ck", "www.ck"), ("www.www.ck", "www.ck"),
    ("k12.ak.us", None), ("test.k12.ak.us", "test.k12.ak.us"), ("www.test.k12.ak.us", "test.k12.ak.us"),
    ("食狮.com.cn", "食狮.com.cn"), ("食狮.公司.cn", "食狮.公司.cn"), ("www.食狮.公司.cn", "食狮.公司.cn"),  # IDNA
    ("shishi.公司.cn", "shishi.公司.cn"), ("公司.cn", None), ("www.食狮.中国", "食狮.中国"), ("中国", None),
    ("xn--85x722f.com.cn", "xn--85x722f.com.cn"), ("xn--85x722f.xn--55qx5d.cn", "xn--85x722f.xn--55qx5d.cn"),
    ("www.xn--85x722f.xn--55qx5d.cn", "xn--85x722f.xn--55qx5d.cn"), ("xn--55qx5d.cn", None),
    ("xn--fiqs8s", None), ("shishi.xn--fiqs8s", "shishi.xn--fiqs8s"),  # punycoded: the same rules
    ("*.mail.example.co.uk", "example.co.uk"), ("mail.example.com.", "example.com"),  # wildcard, root dot
]


@pytest.mark.parametrize(("name", "expected"), CASES)
def test_the_registered_domain_follows_the_lists_algorithm(name: str, expected: str | None) -> None:
    assert registered_domain(name, RULES) == expected


def test_debians_list_gives_the_same_answers() -> None:
    assert SYSTEM_LIST.is_file(), "Debian's publicsuffix package (certkeeper/testbed/install.py installs it)"
    debian = load_suffix_list()
    assert [registered_domain(name, debian) for name, _ in CASES] == [expected for _, expected in CASES]


def test_a_missing_list_leaves_only_the_rule_star(tmp_path: Path) -> None:
    empty = load_suffix_list(tmp_path / "absent.dat")
    assert empty == SuffixList()
    assert registered_domain("a.b.example.co.uk", empty) == "co.uk"  # lumps more names together, never fewer


def test_unicode_and_a_label_forms_compare_as_one() -> None:
    assert ascii_name("食狮.公司.CN") == "xn--85x722f.xn--55qx5d.cn"
    assert RULES.rules >= {"xn--55qx5d.cn", "xn--fiqs8s", "uk.com"}
    assert RULES.wildcards == {"kobe.jp", "mm", "ck"} and RULES.exceptions == {"city.kobe.jp", "www.ck"}


LABEL = st.sampled_from(["a", "b", "www", "example", "co", "uk", "ck", "kobe", "jp", "mm", "com", "食狮", "公司",
                         "cn", "city", "test"])


@given(st.lists(LABEL, min_size=1, max_size=6))
def test_the_registered_domain_is_a_suffix_of_the_name_and_its_own(labels: list[str]) -> None:
    name = ".".join(labels)
    found = registered_domain(name, RULES)
    if found is not None:
        assert name.endswith(found) and found.count(".") >= 1
        assert registered_domain(found, RULES) == found
        longer = registered_domain("more." + name, RULES)
        if found != name:  # a label more on the left of a name below its registered domain changes nothing
            assert longer == found
        else:  # the name is a registered domain: a wildcard rule (*.kobe.jp) makes more.kobe.jp a public suffix
            assert longer == (None if found in RULES.wildcards else found)
