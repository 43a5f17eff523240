"""Every service of the product, in start-up order."""

from __future__ import annotations

from .audit.app import SERVICE as AUDIT
from .auth.app import SERVICE as AUTH
from .common.service import ServiceSpec
from .notifier.app import SERVICE as NOTIFIER
from .recovery.app import SERVICE as RECOVERY

SERVICES: dict[str, ServiceSpec] = {s.name: s for s in (AUTH, NOTIFIER, RECOVERY, AUDIT)}
