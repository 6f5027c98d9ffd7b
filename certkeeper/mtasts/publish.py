"""Publishing a domain's MTA-STS policy in each pass: the policy file, then the TXT records, then the state.

Order matters (RFC 8461 section 3.1): a sender that sees a new ``id`` fetches the policy at once, so the new
policy text is in place (webroot file renamed into place; the daemon's own server reads the state) before the
``_mta-sts`` TXT record announces it.  The TXT records are replaced whole by one TSIG-signed RFC 2136 update per
record (the dns-01 responder's client: one DNS update path in certkeeper), because two ``v=STSv1`` records make
senders ignore both.

What was published is kept in ``<state_dir>/mta-sts/<domain>.json``: the policy, since when, and since when its
``mx`` set (the widen-then-narrow order waits on that).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from certkeeper import dnsclient
from certkeeper.config import AcmeIssuerConfig, Config, MtaStsConfig
from certkeeper.errors import DnsError, InputError, MtaStsPublishError
from certkeeper.mtasts.policy import MODES, WELL_KNOWN_PATH, Policy, policy_id, render_policy, render_tlsrpt, render_txt
from certkeeper.mtasts.rollout import Publication, PublishDecision, decide_publication, next_publication
from certkeeper.store.atomic import write_atomic
from certkeeper.values import frozen

log = logging.getLogger("certkeeper.mtasts")


@frozen
class DnsTarget:
    """Where the TXT records are updated: the primary, its TSIG key file, optionally the zone."""

    server: str
    tsig_key_file: Path
    zone: str | None = None
    ttl: int = 3600


@frozen
class PublishState:
    """``<domain>.json``: the publication, and what DNS was last told (None: never, or no DNS settings)."""

    publication: Publication | None = None
    txt_id: str | None = None
    tlsrpt: str | None = None

    @property
    def policy_id(self) -> str | None:
        return policy_id(render_policy(self.publication.policy)) if self.publication else None


@frozen
class Published:
    """One domain's pass: the decision, the id now announced, and what changed."""

    domain: str
    decision: PublishDecision
    policy_id: str
    changed: bool
    dns_updated: bool


def state_path(state_dir: Path, domain: str) -> Path:
    return state_dir / "mta-sts" / f"{domain}.json"


def load_state(state_dir: Path, domain: str) -> PublishState:
    path = state_path(state_dir, domain)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return PublishState()
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(str(path), f"unreadable MTA-STS state ({exc}); remove it to publish afresh") from None
    try:
        raw = data["publication"]
        publication = None if raw is None else Publication(
            _policy_from(raw["policy"]), datetime.fromisoformat(raw["since"]), datetime.fromisoformat(raw["mx_since"]))
        return PublishState(publication, data.get("txt_id"), data.get("tlsrpt"))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(str(path), f"malformed MTA-STS state ({exc!r}); remove it to publish afresh") from None


def save_state(state_dir: Path, domain: str, state: PublishState) -> None:
    publication = state.publication
    data: dict[str, Any] = {
        "publication": None if publication is None else {
            "policy": {"mode": publication.policy.mode, "max_age": publication.policy.max_age,
                       "mx": list(publication.policy.mx)},
            "since": publication.since.isoformat(), "mx_since": publication.mx_since.isoformat()},
        "txt_id": state.txt_id,
        "tlsrpt": state.tlsrpt,
    }
    write_atomic(state_path(state_dir, domain), (json.dumps(data, indent=2) + "\n").encode(), mode=0o644)


def _policy_from(raw: dict[str, Any]) -> Policy:
    mode = next(m for m in MODES if m == raw["mode"])
    return Policy(mode, int(raw["max_age"]), tuple(str(p) for p in raw["mx"]))


class Publisher:
    """One domain's publication: policy file, TXT records, state."""

    def __init__(self, mta: MtaStsConfig, state_dir: Path, dns_target: DnsTarget | None, *,
                 timeout: float = 30.0) -> None:
        self.mta = mta
        self.state_dir = state_dir
        self.dns_target = dns_target
        self.timeout = timeout

    def publish(self, wanted: Policy, now: datetime) -> Published:
        state = load_state(self.state_dir, self.mta.domain)
        decision = decide_publication(state.publication, wanted, now, narrow_after=self.mta.narrow_after)
        text = render_policy(decision.policy)
        new_id = policy_id(text)
        changed = state.policy_id != new_id
        if self.mta.webroot is not None:
            self._write_webroot(text)
        publication = next_publication(state.publication, decision, now)
        # The state first holds the policy (the daemon's server serves it from there), then DNS announces it.
        if publication != state.publication:
            state = PublishState(publication, state.txt_id, state.tlsrpt)
            save_state(self.state_dir, self.mta.domain, state)
        dns_updated = False
        if self.dns_target is not None:
            tlsrpt = render_tlsrpt(self.mta.rua) if self.mta.rua else None
            records = [(f"_mta-sts.{self.mta.domain}", render_txt(text))]
            if tlsrpt is not None:
                records.append((f"_smtp._tls.{self.mta.domain}", tlsrpt))
            # Asked of the primary every pass: a record changed or removed by hand is put right too.
            stale = self._stale_txt(records)
            if stale:
                self._replace_txt(stale)
                dns_updated = True
            if dns_updated or state.txt_id != new_id or state.tlsrpt != tlsrpt:
                state = PublishState(publication, new_id, tlsrpt)
                save_state(self.state_dir, self.mta.domain, state)
        if changed:
            log.info("MTA-STS policy of %s: %s, id %s", self.mta.domain, decision.reason, new_id)
        return Published(self.mta.domain, decision, new_id, changed, dns_updated)

    def _write_webroot(self, text: str) -> None:
        assert self.mta.webroot is not None
        path = self.mta.webroot / WELL_KNOWN_PATH.lstrip("/")
        try:
            current = path.read_bytes() if path.is_file() else None
            if current != text.encode():
                # 0644: the web server's workers read it; it holds nothing secret.
                write_atomic(path, text.encode(), mode=0o644)
        except OSError as exc:
            raise MtaStsPublishError(self.mta.domain, f"cannot write the policy file {path}: {exc.strerror or exc}") \
                from None

    def _primary(self) -> tuple[str, int, dnsclient.TsigKey]:
        from certkeeper.issuers.challenges import read_secret_file

        target = self.dns_target
        assert target is not None
        key = dnsclient.parse_tsig_key(read_secret_file(target.tsig_key_file, "the TSIG key"),
                                       str(target.tsig_key_file))
        host, port = dnsclient.parse_server(target.server)
        return dnsclient.resolve_address(host), port, key

    def _stale_txt(self, wanted: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The records the primary does not answer exactly as wanted (one TXT record with that value)."""
        try:
            address, port, _ = self._primary()
            return [(name, value) for name, value in wanted
                    if dnsclient.query(address, port, name, "TXT").values != (value,)]
        except (InputError, DnsError) as exc:
            raise MtaStsPublishError(self.mta.domain, f"the TXT records: {exc}") from None

    def _replace_txt(self, records: list[tuple[str, str]]) -> None:
        target = self.dns_target
        assert target is not None
        try:
            address, port, key = self._primary()
            for name, value in records:
                zone = target.zone or dnsclient.find_zone(address, port, name)
                dnsclient.send_update(address, port, zone, key, ttl=target.ttl, replace=[(name, "TXT", _quoted(value))])
        except (InputError, DnsError) as exc:
            raise MtaStsPublishError(self.mta.domain, f"the TXT records: {exc}") from None


def _quoted(value: str) -> str:
    """A TXT value in master-file syntax: one quoted character-string (values here are printable ASCII)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dns_target_for(mta: MtaStsConfig, config: Config) -> DnsTarget | None:
    """``[mta_sts.<domain>]``'s RFC 2136 settings, each missing one taken from the ACME issuer of an MX certificate
    (as DANE does: a mail domain's DNS is usually updated through one key); None: the TXT records are published
    by hand (``certkeeper status`` shows them)."""
    from certkeeper.mtasts.guard import mx_certificates

    server, key_file, zone = mta.dns_server, mta.tsig_key_file, mta.zone
    for certificate in mx_certificates(mta, config.certificates):
        issuer = config.issuers.get(certificate.issuer)
        if isinstance(issuer, AcmeIssuerConfig) and issuer.dns_server and issuer.tsig_key_file:
            server, key_file = server or issuer.dns_server, key_file or issuer.tsig_key_file
            zone = zone or issuer.dns_zone
            break
    if not server or not key_file:
        return None
    return DnsTarget(server, key_file, zone, mta.ttl)


def publish_domain(mta: MtaStsConfig, config: Config, now: datetime) -> Published:
    """One pass's publication for one domain (``renew`` and each daemon pass)."""
    from certkeeper.mtasts.guard import wanted_policy

    publisher = Publisher(mta, config.settings.state_dir, dns_target_for(mta, config))
    return publisher.publish(wanted_policy(mta, config.certificates), now)
