"""`Opened`: the exchange's read serves the first page once and a code's check until the session ends."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from services.auth.handlers import context
from services.auth.handlers.context import Opened
from services.auth.store import Account, PageSession, PageView


def _view(expires_in: timedelta = timedelta(minutes=5)) -> PageView:
    now = datetime.now(UTC)
    session = PageSession("prompt", "a-1", "c-1", "l-1", "https://app.example/back", None, now + expires_in)
    account = Account(*(None for _ in Account.__dataclass_fields__))  # the fields' values play no part here
    return PageView(session, account, None)


def test_the_first_page_is_served_once():
    opened, view = Opened(), _view()
    opened.put(b"s", view)
    assert opened.first_page(b"s") is view
    assert opened.first_page(b"s") is None  # a reload reads the database
    assert opened.known(b"s", datetime.now(UTC)) is view  # the code posted from that page still has it


def test_a_first_page_later_than_its_ttl_is_not_served(monkeypatch):
    opened = Opened(page_ttl=2.0)
    opened.put(b"s", _view())
    later = time.monotonic() + 2.5
    monkeypatch.setattr(context.time, "monotonic", lambda: later)
    assert opened.first_page(b"s") is None


def test_known_ends_with_the_session_and_when_forgotten():
    opened = Opened()
    opened.put(b"ended", _view(timedelta(seconds=-1)))
    opened.put(b"live", _view())
    assert opened.known(b"ended", datetime.now(UTC)) is None
    assert opened.first_page(b"ended") is None  # gone altogether
    opened.forget(b"live")
    assert opened.known(b"live", datetime.now(UTC)) is None


def test_the_oldest_go_first_when_full():
    opened = Opened(size=2)
    for key in (b"1", b"2", b"3"):
        opened.put(key, _view())
    assert opened.known(b"1", datetime.now(UTC)) is None
    assert opened.known(b"2", datetime.now(UTC)) is not None and opened.known(b"3", datetime.now(UTC)) is not None
