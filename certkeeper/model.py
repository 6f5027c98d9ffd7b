"""Value types shared by every layer: key types, durations, renewal thresholds, MTA-STS modes and patterns."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from datetime import timedelta

from certkeeper.values import frozen

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (tests/test_startup_imports.py)
if TYPE_CHECKING:  # fractions brings decimal and numbers: not loaded by ``certkeeper check``, which parses none
    from fractions import Fraction
    from typing import Literal


class KeyType(enum.StrEnum):
    """The key algorithms certkeeper issues for, spelled as in the configuration and the JSON output."""

    ECDSA_P256 = "ecdsa-p256"
    ECDSA_P384 = "ecdsa-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"

    @property
    def family(self) -> str:
        """``"ecdsa"`` or ``"rsa"``: what a mail daemon's dual-certificate setting distinguishes."""
        return self.value.split("-", 1)[0]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Longer than any certificate, CA or wait needs, and far from datetime's limits: ``now + duration`` always works.
MAX_DURATION = timedelta(days=100 * 366)
MAX_NAME_LENGTH = 100  # names become file names (with suffixes); NAME_MAX is 255 bytes


def parse_duration(text: str) -> timedelta:
    """``"90s"``, ``"15m"``, ``"12h"``, ``"30d"`` (one number, one unit) -> timedelta; ValueError otherwise."""
    match = _DURATION.match(text)
    if not match:
        msg = f"not a duration: {text!r}"
        raise ValueError(msg)
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > MAX_DURATION.total_seconds():
        msg = f"duration {text!r} is longer than {MAX_DURATION.days} days"
        raise ValueError(msg)
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling in the configuration's units: 43200 s -> ``"12h"``."""
    seconds = value.total_seconds()
    for unit in ("d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@frozen
class RenewBefore:
    """When to renew: a fraction of the lifetime left (``"1/3"``) or a fixed time before expiry (``"30d"``).

    A fraction scales with the certificate: 30 days of a 90-day certificate, 2 days of a 6-day one.  A fixed
    duration longer than the lifetime would renew every time; :meth:`before_expiry` caps it at half the lifetime
    so a short-lived certificate is not renewed in a loop.
    """

    fraction: Fraction | None = None
    duration: timedelta | None = None

    @classmethod
    def parse(cls, text: str) -> RenewBefore:
        text = text.strip()
        if "/" in text or text.startswith("0."):
            from fractions import Fraction

            try:
                fraction = Fraction(text)
            except ZeroDivisionError:  # "0/0", "1/0": found by the configuration fuzzer
                msg = f"not a fraction: {text!r}"
                raise ValueError(msg) from None
            if not 0 < fraction < 1:
                msg = f"fraction must be between 0 and 1: {text!r}"
                raise ValueError(msg)
            return cls(fraction=fraction)
        return cls(duration=parse_duration(text))

    def before_expiry(self, lifetime: timedelta) -> timedelta:
        """How long before ``not_after`` renewal becomes due, for a certificate of ``lifetime``."""
        if self.fraction is not None:
            return lifetime * float(self.fraction)
        assert self.duration is not None
        return min(self.duration, lifetime / 2)

    def __str__(self) -> str:
        if self.fraction is not None:
            return f"{self.fraction.numerator}/{self.fraction.denominator}"
        assert self.duration is not None
        return format_duration(self.duration)


# Certificates living shorter than this many times the largest warning threshold get thresholds scaled to their
# lifetime, the largest becoming a quarter of it (alerts and ``check`` alike). A quarter, not a third: the default
# renew_before is a third, and a certificate on schedule must not warn (a 160-hour one renews with about 53 h
# left and warns at 40 h: 13 hours of retries before anyone is told; a 90-day one keeps 21 days).
SHORT_LIVED_FACTOR = 4

NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")


def is_safe_name(name: str) -> bool:
    """Names of certificates and issuers become directory names: only ``[A-Za-z0-9._-]``, never . or .., and
    at most :data:`MAX_NAME_LENGTH` characters."""
    return bool(NAME_PATTERN.match(name)) and name not in {".", ".."} and len(name) <= MAX_NAME_LENGTH


def parse_listen(listen: str) -> tuple[str, int]:
    """``127.0.0.1:9466``, ``[::1]:9466``, ``localhost:9466``, ``:9466`` (every address) -> (host, port)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        msg = f"metrics_listen {listen!r}: expected host:port such as 127.0.0.1:9466"
        raise ValueError(msg)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if any(c.isspace() or c in "/[]" for c in host):
        msg = f"metrics_listen {listen!r}: {host!r} is not a host name or address"
        raise ValueError(msg)
    return host, int(port_text)


# -- MTA-STS (RFC 8461) values the configuration checks and certkeeper.mtasts works with ------------------------

if TYPE_CHECKING:
    MtaStsMode = Literal["enforce", "testing", "none"]
MTA_STS_MODES: tuple[MtaStsMode, ...] = ("enforce", "testing", "none")
# RFC 8461 section 3.2: max_age is at most 31557600 seconds (about one year).
MTA_STS_MAX_AGE_LIMIT = 31_557_600
_MX_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


def mx_pattern_problem(pattern: str) -> str:
    """Why ``pattern`` is not a valid MTA-STS ``mx`` value (``["*."] Domain``, RFC 8461 section 3.2), or ""."""
    name = pattern.lower()
    if name.startswith("*."):
        name = name[2:]
    if not name:
        return "empty"
    if "*" in name:
        return 'a wildcard is allowed only as the whole first label ("*.example.org")'
    if len(name) > 253 or not name.isascii():
        return "not an ASCII host name (use the A-label form of IDNs) of at most 253 characters"
    labels = name.split(".")
    if len(labels) < 2 and not pattern.startswith("*."):
        return "not a fully qualified host name"
    if not all(_MX_LABEL.match(label) for label in labels):
        return "not a host name (letters, digits and inner hyphens, labels of 1 to 63 characters)"
    return ""


def names_cover(names: Sequence[str], domains: Sequence[str]) -> list[str]:
    """Which of ``domains`` the certificate names do NOT cover (wildcards match one label, RFC 6125)."""
    lowered = [n.lower() for n in names]
    missing = []
    for domain in domains:
        d = domain.lower()
        if d in lowered:
            continue
        parent = d.split(".", 1)[1] if "." in d else ""
        if not d.startswith("*.") and parent and f"*.{parent}" in lowered:
            continue
        missing.append(domain)
    return missing
