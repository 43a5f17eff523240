"""Pure rules: RFC 6238 vectors, windows, lockout delays, backup codes, e-mail comparison."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from services.auth import domain
from services.common import emails
from services.common.errors import BadRequest

# RFC 6238 Appendix B: seeds are ASCII "12345678901234567890" repeated to the digest size.
SEEDS = {
    "sha1": b"12345678901234567890",
    "sha256": b"12345678901234567890123456789012",
    "sha512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
VECTORS = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]


@pytest.mark.parametrize("t,sha1,sha256,sha512", VECTORS)
def test_rfc6238_appendix_b_vectors_pass_the_verifier(t, sha1, sha256, sha512):
    for digest, code in (("sha1", sha1), ("sha256", sha256), ("sha512", sha512)):
        step = domain.match_totp(SEEDS[digest], code, float(t), digits=8, digest=digest, window=0)
        assert step == t // 30, (digest, t)
        wrong = str((int(code) + 1) % 10**8).zfill(8)
        assert domain.match_totp(SEEDS[digest], wrong, float(t), digits=8, digest=digest, window=0) is None


def test_window_accepts_one_step_either_side_only():
    key = SEEDS["sha1"]
    t = 1_700_000_000.0
    for offset, expected in ((-30, True), (0, True), (30, True), (-60, False), (60, False)):
        code = domain.hotp(key, int((t + offset) // 30))
        assert (domain.match_totp(key, code, t) is not None) is expected, offset


def test_secret_is_160_bits_base32_and_grouped_for_typing():
    secret = domain.new_secret()
    assert len(base64.b32decode(secret + "=" * (-len(secret) % 8))) == 20
    assert domain.group_secret(secret).replace(" ", "") == secret
    assert all(len(g) == 4 for g in domain.group_secret(secret).split(" "))


def test_otpauth_uri_names_issuer_and_account():
    uri = domain.otpauth_uri("JBSWY3DPEHPK3PXP", "ada@example.com", "Acme & Co")
    assert uri.startswith("otpauth://totp/Acme%20%26%20Co:ada@example.com?secret=JBSWY3DPEHPK3PXP")
    assert "issuer=Acme%20%26%20Co" in uri and "digits=6" in uri and "period=30" in uri


def test_backup_codes_are_unambiguous_and_long_enough():
    codes = domain.new_backup_codes()
    assert len(codes) == 10 and len(set(codes)) == 10
    for code in codes:
        raw = domain.normalize_backup_code(code)
        assert len(raw) == 15 and not set(raw) & set("01ILO")
    assert domain.normalize_backup_code(codes[0].lower().replace("-", " ")) == codes[0].replace("-", "")
    assert len(domain.BACKUP_ALPHABET) ** domain.BACKUP_CODE_LENGTH >= 2**64
    with pytest.raises(BadRequest):
        domain.normalize_backup_code("ABCDE-FGHJK-MNPQ0")


def test_lock_durations_grow_to_fifteen_minutes():
    assert [domain.lock_duration(n).total_seconds() / 60 for n in range(1, 7)] == [1, 2, 4, 8, 15, 15]
    t = datetime(2026, 1, 1, tzinfo=UTC)
    outcome = domain.register_failure(8, 0, t)
    assert not outcome.newly_locked and outcome.consecutive_failures == 9
    outcome = domain.register_failure(9, 0, t)
    assert outcome.newly_locked and outcome.locked_until == t + timedelta(minutes=1)
    outcome = domain.register_failure(10, 1, t)
    assert outcome.locked_until == t + timedelta(minutes=2)


def test_decisions():
    t = datetime(2026, 1, 1, tzinfo=UTC)
    state = domain.MfaState(enrolled=False, forced=False, locked_until=None, backup_email_verified=False)
    assert domain.decide(state, t) == ("allow", [])
    assert domain.decide(domain.MfaState(False, True, None, False), t) == ("enroll", ["totp"])
    assert domain.decide(domain.MfaState(True, False, None, True), t) == ("verify", ["totp", "backup_code", "backup_email"])
    assert domain.decide(domain.MfaState(True, True, t + timedelta(seconds=1), False), t) == ("deny", [])


def test_email_comparison_is_trimmed_and_case_insensitive():
    assert emails.same(" Ada@Example.COM ", "ada@example.com")
    assert not emails.same("ada+1@example.com", "ada@example.com")
    with pytest.raises(BadRequest):
        domain.check_email("not-an-email")
    with pytest.raises(BadRequest):
        domain.check_email("a@b.com\r\nBcc: x@y.com")


@pytest.mark.parametrize("address", ["jörg@müller.de", "ada@xn--mller-kva.de", "josé.ñ@example.org", "ada+mfa@example.co.uk",
                                     "ada@corp.local", "ada@acme.test"])
def test_international_addresses_are_valid(address):
    assert domain.check_email(f" {address} ") == address


@pytest.mark.parametrize("address", ["ada@example", "ada@localhost", "Ada <ada@example.com>", "ada@[192.0.2.1]",
                                     '"ada"@example.com', "a" * 65 + "@example.com", "ada@" + "a" * 250 + ".com"])
def test_what_is_not_one_plain_deliverable_address_is_invalid(address):
    with pytest.raises(BadRequest) as caught:
        domain.check_email(address)
    assert caught.value.code == "invalid_email"


def test_one_comparison_key_for_case_unicode_and_punycode():
    assert emails.key(" Jörg@MÜLLER.de ") == emails.key("jörg@xn--mller-kva.de") == "jörg@müller.de"
    assert emails.same("STRASSE@example.com", "strasse@example.com")
    assert not emails.same("jörg@müller.de", "jorg@muller.de")
    assert emails.key(" Not An Address ") == "not an address"  # a lookup by it finds nothing
