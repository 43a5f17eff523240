"""Auth use cases, one module per family over a shared `context` and the `events` they publish.

`directory` (companies, accounts, status), `enrolment` (TOTP and backup codes), `backup_email`,
`disable` (turning MFA off), `logins` (the second step and login links), `rotation` (keys) and
`retention` (expired rows).
The families never import one another; each loads state through `store`, applies `domain`
rules and writes state and events in one transaction (see `context` for who opens it).
"""
