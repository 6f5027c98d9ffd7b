"""Registered domains from the Public Suffix List (https://publicsuffix.org/list/), by its own algorithm.

A CA that limits certificates "per registered domain" (Let's Encrypt: https://letsencrypt.org/docs/rate-limits/)
counts ``new.blog.example.co.uk`` against ``example.co.uk``: the public suffix (``co.uk``, a rule of the list)
plus one label.  The list is Debian's ``publicsuffix`` package (:data:`SYSTEM_LIST`), ICANN and private sections
both, as the CAs use it.

The algorithm, as publicsuffix.org states it:

1. every rule that matches the name is noted; a rule's ``*`` label matches any one label;
2. no rule matches: the prevailing rule is ``*`` (an unlisted TLD is a public suffix);
3. an exception rule (``!www.ck``) that matches prevails over all others;
4. otherwise the matching rule with the most labels prevails;
5. an exception rule prevails minus its leftmost label;
6. the public suffix is the name's labels matched by the prevailing rule; the registered domain is it plus
   one label (none when the name is a public suffix itself).

Names and rules are compared label by label in one form: lower case, A-labels (``公司`` is ``xn--55qx5d``), so
a name given in either form finds the rule written in either; the answer keeps the labels of the name as given.
Wildcards are only the leftmost label of a rule, as every rule of the list has them.

Pure: :func:`parse_suffix_list` takes the file's text; reading it is :func:`load_suffix_list`.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from certkeeper.values import field, frozen

SYSTEM_LIST = Path("/usr/share/publicsuffix/public_suffix_list.dat")  # Debian's publicsuffix package


@frozen
class SuffixList:
    """The rules, each as its labels joined in A-label form: plain rules, the parents of wildcard rules
    (``*.ck`` is kept as ``ck``), and exception rules (``!www.ck`` as ``www.ck``)."""

    rules: frozenset[str] = field(default_factory=frozenset)
    wildcards: frozenset[str] = field(default_factory=frozenset)
    exceptions: frozenset[str] = field(default_factory=frozenset)


def canonical_label(label: str) -> str:
    """A label as the list's rules are compared: NFC, lower case, ``xn--`` A-label when not ASCII."""
    label = unicodedata.normalize("NFC", label).lower()
    if label.isascii():
        return label
    return "xn--" + label.encode("punycode").decode("ascii")


def ascii_name(name: str) -> str:
    """A name in the form rules are compared in (:func:`canonical_label` for each label)."""
    return ".".join(canonical_label(label) for label in name.split("."))


def parse_suffix_list(text: str) -> SuffixList:
    """The rules of a list in publicsuffix.org's format: one rule per line up to the first white space,
    ``//`` comments and blank lines skipped."""
    rules: set[str] = set()
    wildcards: set[str] = set()
    exceptions: set[str] = set()
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("//"):
            continue
        rule = words[0].strip(".")
        if rule.startswith("!"):
            exceptions.add(ascii_name(rule[1:]))
        elif rule.startswith("*."):
            wildcards.add(ascii_name(rule[2:]))
        elif rule:
            rules.add(ascii_name(rule))
    return SuffixList(frozenset(rules), frozenset(wildcards), frozenset(exceptions))


def suffix_labels(labels: list[str], suffixes: SuffixList) -> int:
    """How many of the (canonical) ``labels``, from the right, are the public suffix."""
    prevailing = 1  # no rule matches: "*"
    for count in range(1, len(labels) + 1):
        candidate = ".".join(labels[-count:])
        if candidate in suffixes.exceptions:
            return count - 1  # an exception prevails, minus its leftmost label
        parent = ".".join(labels[-count + 1:]) if count > 1 else None
        if candidate in suffixes.rules or (parent is not None and parent in suffixes.wildcards):
            prevailing = count
    return prevailing


def registered_domain(name: str, suffixes: SuffixList) -> str | None:
    """The registered domain of ``name`` (``a.b.example.co.uk`` -> ``example.co.uk``), in lower case and in the
    labels ``name`` was written in; None for a public suffix itself or a name with an empty label.  A leading
    ``*.`` (a wildcard identifier) and a trailing dot are not part of the name."""
    name = name.removeprefix("*.").removesuffix(".")
    given = [unicodedata.normalize("NFC", label).lower() for label in name.split(".")]
    if not name or any(not label for label in given):
        return None
    count = suffix_labels([canonical_label(label) for label in given], suffixes)
    if count >= len(given):
        return None
    return ".".join(given[-count - 1:])


def load_suffix_list(path: Path = SYSTEM_LIST) -> SuffixList:
    """The list in ``path``; an empty list (only the rule ``*``: each TLD a public suffix) when it is missing,
    which lumps more names into one registered domain (``co.uk``), never fewer."""
    try:
        return parse_suffix_list(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return SuffixList()
