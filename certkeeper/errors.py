"""Every error certkeeper raises on purpose, and the exit code each maps to.

The tree::

    CertkeeperError                 exit 1   something failed; the message says what and where
    ├── UsageError                  exit 64  the command line is wrong (EX_USAGE)
    ├── ConfigError                 exit 78  the configuration is wrong (EX_CONFIG): file, key path, found, expected
    ├── InputError                  exit 65  a file certkeeper was given is unreadable or malformed (EX_DATAERR)
    │   └── ReportRefused           exit 65  a TLS report (RFC 8460) refused: where it came from, JSON path, why
    ├── StoreError                  exit 74  the state store failed (EX_IOERR)
    │   ├── SchemaTooNew            exit 74  the store was written by a newer certkeeper
    │   └── FleetStoreDown          exit 74  the fleet's database is unreachable; renewals wait for fleet_grace
    ├── UnsafePath                  exit 77  a trusted path (state_dir, copy_to, hook, secret) others could change
    ├── LockBusy                    exit 75  another certkeeper holds the certificate's lock (EX_TEMPFAIL)
    ├── OrderWaiting                exit 75  the order budget (orders_per_3h, duplicates_per_week,
    │                                        certificates_per_domain_week) is spent
    ├── IssuanceError               exit 1   the CA did not issue: issuer, certificate, what the CA said
    │   ├── CaUnavailable           exit 69  the CA could not be reached or is rate limiting (EX_UNAVAILABLE)
    │   └── CaError                 exit 1   the internal CA itself is broken: init, passphrase, files
    ├── ChallengeFailed             exit 1   a challenge answer could not be published or was not seen in time
    ├── DnsError                    exit 69  a DNS server could not be asked, or refused an update: which, why
    ├── TlsaDnsError                exit 69  publishing or confirming TLSA records failed
    ├── MtaStsPublishError          exit 69  an MTA-STS policy file or TXT record could not be written: domain, why
    ├── InstallRefused              exit 1   a new key pair failed a pre-install check; nothing was installed
    ├── HookFailed                  exit 1   a reload hook exited non-zero or timed out
    ├── AlertDeliveryFailed         exit 69  no relay accepted the alert mail; it stays queued
    ├── VerificationFailed          exit 1   an endpoint does not serve what was installed (rolled back)
    ├── MailToolFailed              exit 1   postconf, doveconf or exim could not report the configuration
    ├── SetupFailed                 exit 1   a step of ``setup --apply`` failed; the backup was restored
    └── ReportSourceFailed          exit 69  TLS reports could not be fetched (IMAPS) or served (the POST endpoint)

Findings about certificates served by other people's servers are not errors: the probe returns them as data.
Only failing to do the work raises.  The CLI maps an error to its exit code in one place
(:func:`certkeeper.cli.main`), through :attr:`CertkeeperError.exit_code`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (tests/test_startup_imports.py)
if TYPE_CHECKING:
    from pathlib import Path

EX_USAGE = 64
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78


class CertkeeperError(Exception):
    """The root: an expected failure with a message a mail administrator can act on."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(CertkeeperError):
    exit_code = EX_USAGE


class ConfigError(CertkeeperError):
    """A configuration mistake, located: which file, which key path, what was found, what was expected."""

    exit_code = EX_CONFIG

    def __init__(
        self,
        file: Path | str,
        key_path: str,
        found: str,
        expected: str,
        hint: str = "",
    ) -> None:
        from pathlib import Path  # not with the module: one check never needs pathlib (issue 23)

        self.file = Path(file)
        self.key_path = key_path
        self.found = found
        self.expected = expected
        self.hint = hint
        where = f"{self.file}: {key_path}" if key_path else str(self.file)
        message = f"{where}: found {found}, expected {expected}"
        if hint:
            message += f"; {hint}"
        super().__init__(message)


class ConfigErrors(ConfigError):
    """Several configuration mistakes at once, so an administrator fixes them in one go."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        first = errors[0]
        super().__init__(first.file, first.key_path, first.found, first.expected, first.hint)
        self.errors = tuple(errors)
        self.message = "\n".join(error.message for error in self.errors)


class InputError(CertkeeperError):
    """A file or value handed to certkeeper is malformed: names the path and what is wrong with it."""

    exit_code = EX_DATAERR

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")


class ReportRefused(InputError):
    """A TLS report (RFC 8460) that is not imported: ``where`` it came from, the JSON ``path``, and why.

    Refusing one report never stops the others: intake collects refusals next to what it imported.
    """

    def __init__(self, where: str, path: str, problem: str) -> None:
        self.path = path
        super().__init__(where, f"TLS report refused: {path}: {problem}" if path else f"TLS report refused: {problem}")


class StoreError(CertkeeperError):
    exit_code = EX_IOERR


class VersionWriteFailed(StoreError):
    """A new version folder (or the ``current`` flip) could not be written, e.g. on a full disk; the pair that
    was current stays current, and the half-written folder is removed."""

    def __init__(self, path: Path, error: str) -> None:
        self.path = path
        self.error = error
        super().__init__(f"{path}: cannot write the new version: {error}; the installed pair stays current")


class SchemaTooNew(StoreError):
    def __init__(self, location: str, found: int, supported: int) -> None:
        self.location = location
        self.found = found
        self.supported = supported
        super().__init__(
            f"{location}: the state store has schema version {found}, this certkeeper understands up to "
            f"{supported}; upgrade certkeeper on this host (other nodes already run a newer one)"
        )


class UnsafePath(CertkeeperError):
    """A path certkeeper must trust can be changed by someone else: which path, its owner and mode, the fix.

    Nothing is written, followed or run through it (a symbolic link planted where a lock should be would
    otherwise make root truncate its target).
    """

    exit_code = EX_NOPERM

    def __init__(self, what: str, path: Path | str, owner: str, mode: int, problem: str, fix: str) -> None:
        from pathlib import Path

        self.what = what
        self.path = Path(path)
        self.owner = owner
        self.mode = mode
        self.problem = problem
        self.fix = fix
        super().__init__(f"{what} {self.path} {problem} (owner {owner}, mode {mode & 0o7777:04o}); "
                         f"refusing to use it: {fix}")


class LockBusy(CertkeeperError):
    exit_code = EX_TEMPFAIL

    def __init__(self, name: str, waited: float, holder: str = "") -> None:
        self.name = name
        self.waited = waited
        self.holder = holder
        held_by = f" (held by {holder})" if holder else ""
        super().__init__(
            f"certificate {name!r}: another certkeeper is working on it{held_by}; "
            f"gave up after {waited:.0f} s, it will be looked at again on the next run"
        )


class OrderWaiting(CertkeeperError):
    """The issuer's order budget is spent for now (or the CA said 429): the renewal waits until ``go_at``."""

    exit_code = EX_TEMPFAIL

    def __init__(self, name: str, issuer: str, go_at: datetime) -> None:
        self.name = name
        self.issuer = issuer
        self.go_at = go_at
        super().__init__(
            f"certificate {name!r}: waiting for the order budget of issuer {issuer!r} (orders_per_3h, "
            f"duplicates_per_week, certificates_per_domain_week, or the CA's Retry-After); it may go at "
            f"{go_at:%Y-%m-%d %H:%M:%S} UTC")


class IssuanceError(CertkeeperError):
    """The issuer did not produce a certificate.  ``retry_after`` is a hint in seconds, when the CA gave one."""

    def __init__(
        self,
        issuer: str,
        certificate: str,
        detail: str,
        *,
        retry_after: float | None = None,
        problem_type: str = "",
        identifier: str = "",
    ) -> None:
        self.issuer = issuer
        self.certificate = certificate
        self.detail = detail
        self.retry_after = retry_after
        self.problem_type = problem_type
        self.identifier = identifier
        about = f" for {identifier}" if identifier else ""
        super().__init__(f"certificate {certificate!r}, issuer {issuer!r}{about}: {detail}")


class CaUnavailable(IssuanceError):
    exit_code = EX_UNAVAILABLE


class InstallRefused(CertkeeperError):
    """A freshly issued pair failed a check before install; the current pair is untouched."""

    def __init__(self, certificate: str, reason: str) -> None:
        self.certificate = certificate
        self.reason = reason
        super().__init__(f"certificate {certificate!r}: not installed: {reason}")


class HookFailed(CertkeeperError):
    def __init__(
        self,
        hook: str,
        *,
        exit_status: int | None,
        output: str,
        timed_out: bool = False,
        timeout: float | None = None,
    ) -> None:
        self.hook = hook
        self.exit_status = exit_status
        self.output = output
        self.timed_out = timed_out
        if timed_out:
            what = f"did not finish within {timeout:g} s and was killed"
        elif exit_status is None:
            what = "could not be started"
        else:
            what = f"exited with status {exit_status}"
        tail = output.strip().splitlines()[-5:]
        said = (": " + " | ".join(tail)) if tail else ""
        super().__init__(f"reload hook {hook} {what}{said}")


class VerificationFailed(CertkeeperError):
    """After ``action`` (a rollback, a hook test), endpoints do not serve ``version``; ``wrong`` says what each
    wrong probe point served."""

    def __init__(self, certificate: str, version: str, action: str, wrong: str) -> None:
        self.certificate = certificate
        self.version = version
        self.action = action
        self.wrong = wrong
        super().__init__(f"certificate {certificate!r}: {action}, but {wrong}")


class AlertDeliveryFailed(CertkeeperError):
    """No relay accepted the mail: every route tried, and what each said.  The alert stays queued."""

    exit_code = EX_UNAVAILABLE

    def __init__(self, attempts: Sequence[str]) -> None:
        self.attempts = tuple(attempts)
        super().__init__("alert mail not sent: " + "; ".join(self.attempts))


class FleetStoreDown(StoreError):
    """The fleet database cannot be reached and ``fleet_grace`` has not passed: the renewal waits."""

    def __init__(self, name: str, location: str, since: datetime, alone_at: datetime, error: str) -> None:
        self.name = name
        self.location = location
        self.since = since
        self.alone_at = alone_at
        self.error = error
        super().__init__(
            f"certificate {name!r}: the fleet store {location} is unreachable since {since:%Y-%m-%d %H:%M:%S} "
            f"UTC ({error}); renewing alone from {alone_at:%Y-%m-%d %H:%M:%S} UTC (fleet_grace) unless it is "
            f"back before")


class CaError(IssuanceError):
    """An :class:`IssuanceError` about the CA itself rather than one certificate (init, passphrase, files).

    It is an IssuanceError so that the lifecycle, which catches that, treats a broken CA like any CA refusing;
    its message names the issuer (and the file) instead of an empty certificate name.
    """

    def __init__(self, issuer: str, detail: str, *, certificate: str = "", identifier: str = "") -> None:
        super().__init__(issuer, certificate, detail, identifier=identifier)
        if not certificate:
            self.message = f"internal CA {issuer!r}: {detail}"
            self.args = (self.message,)


class ChallengeFailed(CertkeeperError):
    """A challenge answer could not be published, or the CA's view of it could not be confirmed in time."""


class DnsError(CertkeeperError):
    """A DNS server could not be asked, or refused an update; ``server`` is ``host:port`` (or a file)."""

    exit_code = EX_UNAVAILABLE

    def __init__(self, server: str, detail: str) -> None:
        self.server = server
        self.detail = detail
        super().__init__(f"DNS server {server}: {detail}")


class TlsaDnsError(CertkeeperError):
    """Publishing or confirming TLSA records failed; the message names the server and what to fix."""

    exit_code = EX_UNAVAILABLE


class MailToolFailed(CertkeeperError):
    """``postconf``, ``doveconf`` or ``exim -bP`` could not be run or rejected the configuration."""

    def __init__(self, command: Sequence[str], reason: str) -> None:
        self.command = tuple(command)
        self.reason = reason
        super().__init__(f"{' '.join(command)}: {reason}")


class SetupFailed(CertkeeperError):
    """A step of ``setup --apply`` failed; the caller restores the backup."""


class MtaStsPublishError(CertkeeperError):
    """The MTA-STS policy of ``domain`` could not be published (policy file, or TXT records by RFC 2136)."""

    exit_code = EX_UNAVAILABLE

    def __init__(self, domain: str, detail: str) -> None:
        self.domain = domain
        self.detail = detail
        super().__init__(f"MTA-STS policy of {domain}: {detail}")


class ReportSourceFailed(CertkeeperError):
    """TLS reports could not be fetched or received: the source (``imaps://user@host/INBOX``), and what failed.

    Nothing fetched is lost: a mail is marked seen (or deleted) only after its reports are stored.
    """

    exit_code = EX_UNAVAILABLE

    def __init__(self, source: str, detail: str) -> None:
        self.source = source
        self.detail = detail
        super().__init__(f"TLS reports from {source}: {detail}")
