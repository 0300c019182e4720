"""
The web client, in a real headless Chromium (Selenium and chromedriver),
against the real ``twistd -n chatd``: two browser pages and a seed-protocol
client in one room, the UI's commands, text shown as text, and the page's
reconnection after a server restart.  Screenshots go to ``test-artifacts/``.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium``
package; without them the test skips, and CHATD_REQUIRE_BROWSER=1 (set by
CI) makes that a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.support.raw import read_until_eof
from tests.support.raw import free_port

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
DOC_IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
XSS = "<img src=x onerror=alert(1)>"
WAIT = 20


def _missing() -> str | None:
    for tool in ("chromium", "chromedriver"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install -y chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture
def browsers() -> Iterator[Callable[[], Any]]:
    missing = _missing()
    if missing is not None:
        if os.environ.get("CHATD_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CHATD_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    made: list[Any] = []

    def start(*extra: str) -> Any:
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "chromium"
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,700", *extra):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
        made.append(driver)
        return driver

    yield start
    for driver in made:
        driver.quit()


class Page:
    """One browser tab on the chat page, driven the way a person would."""

    def __init__(self, driver: Any, url: str, name: str) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.name = driver, name
        self.wait = WebDriverWait(driver, WAIT)
        driver.get(url)
        self.until(lambda: "Connected" in self.text("status") or not self.el("auth-form").get_attribute("hidden"),
                   "to connect")

    def el(self, element_id: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id)

    def text(self, element_id: str) -> str:
        return str(self.el(element_id).text)

    def until(self, condition: Callable[[], Any], what: str) -> Any:
        return self.wait.until(lambda _: condition(), f"{self.name}: waiting {what}")

    def submit(self, input_id: str, value: str) -> None:
        field = self.el(input_id)
        field.clear()
        field.send_keys(value)
        field.submit() if input_id != "text" else self.el("send-form").submit()

    def messages(self) -> list[str]:
        from selenium.webdriver.common.by import By

        lists = self.driver.find_elements(By.ID, "messages")  # the conversation shown, if any
        return [li.text for li in lists[0].find_elements(By.TAG_NAME, "li")] if lists else []

    def shot(self, name: str, docs: bool = False) -> None:
        """A screenshot in test-artifacts/; ``docs``: the documentation's
        picture of it too, written over when CHATD_WRITE_SCREENSHOTS=1
        (``make screenshots``), so the README shows the page as it is."""
        ARTIFACTS.mkdir(exist_ok=True)
        self.driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
        if docs and os.environ.get("CHATD_WRITE_SCREENSHOTS") == "1":
            self.driver.save_screenshot(str(DOC_IMAGES / f"{name}.png"))


async def _on_a_daemon(scenario: Callable[..., None], browsers: Any, daemon_factory: Any) -> None:
    """Run a browser scenario (in a thread: Selenium blocks) against a real twistd chatd."""
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1")
    port = await chatd.wait_listening()
    await deferToThread(scenario, browsers, port)


def _first_part(browsers: Callable[[], Any], port: int) -> dict[str, Any]:
    from selenium.webdriver.common.by import By
    from websockets.sync.client import connect

    url = f"http://127.0.0.1:{port}/"
    ann = Page(browsers(), url, "ann")
    assert not ann.el("sign-in").is_displayed()  # this server checks no tokens
    ann.submit("nick", "Ann")
    ann.until(lambda: ann.el("nick").get_attribute("value") == "Ann", "for the nick")
    ann.until(lambda: ann.text("status") == "Connected as Ann", "to be called by its nick")
    ann.submit("room-name", "lobby")
    ann.until(lambda: "lobby" in ann.text("room-title"), "to be in the room")
    room_id = ann.text("room-title").split("(")[-1].rstrip(")")
    ann.submit("text", "hello from Ann")

    stack = contextlib.ExitStack()
    seed = stack.enter_context(connect(f"ws://127.0.0.1:{port}", open_timeout=WAIT))
    seed_id = json.loads(seed.recv(timeout=WAIT))["client_id"]
    seed.send(json.dumps({"action": "join", "body": {"room_id": room_id}}))
    assert json.loads(seed.recv(timeout=WAIT))["status"] == "success"

    bob = Page(browsers(), url, "bob")
    bob.submit("nick", "Bob")
    # The room list, and its Join button.
    bob.until(lambda: "lobby" in bob.text("rooms"), "for the room list")
    bob.el("rooms").find_element(By.TAG_NAME, "button").click()
    bob.until(lambda: "lobby" in bob.text("room-title"), "to be in the room")
    # History on join: Ann's message from before Bob came.
    bob.until(lambda: any("hello from Ann" in m for m in bob.messages()), "for the history")

    bob.submit("text", "hi from Bob")
    ann.until(lambda: any("Bob" in m and "hi from Bob" in m for m in ann.messages()), "for Bob's message")
    from_bob = json.loads(seed.recv(timeout=WAIT))
    assert (from_bob["body"], from_bob["nick"]) == ("hi from Bob", "Bob")

    seed.send(json.dumps({"action": "message", "body": "hi from the seed client"}))
    assert json.loads(seed.recv(timeout=WAIT))["status"] == "success"
    for page in (ann, bob):
        page.until(lambda p=page: any("hi from the seed client" in m for m in p.messages()), "for the seed's message")
    ann.until(lambda: "Bob" in ann.text("members"), "for Bob among the members")
    ann.shot("web-client", docs=True)  # the README's picture

    # A body that is HTML shows as its characters and makes no element.
    bob.submit("text", XSS)
    ann.until(lambda: any(XSS in m for m in ann.messages()), "for the HTML-looking body")
    assert ann.el("messages").find_elements(By.TAG_NAME, "img") == []
    assert ann.driver.execute_script("return document.querySelectorAll('img').length") == 0

    members = ann.text("members")
    assert "Ann" in members and "Bob" in members and seed_id in members
    ann.shot("web-two-pages-ann")
    bob.shot("web-two-pages-bob")

    # Errors are shown as they come.
    bob.submit("room-id", "deadbeef")
    bob.until(lambda: bob.text("side-error") == "Room deadbeef does not exist", "for the error where it was asked")
    bob.el("leave").click()
    bob.until(lambda: bob.text("room-title") == "Not in a room", "to leave")
    ann.until(lambda: any("Bob left" in m for m in ann.messages()), "for Bob's leave event")
    ann.until(lambda: "Bob" not in ann.text("members"), "for the member list")
    stack.close()

    # A phone-sized screen.
    ann.driver.set_window_size(390, 844)
    ann.shot("web-phone")
    return {"ann": ann, "bob": bob}


def _wait_disconnected(pages: dict[str, Any]) -> None:
    ann = pages["ann"]
    ann.until(lambda: "reconnecting" in ann.text("status"), "to notice the server went away")
    ann.shot("web-reconnecting")


def _wait_reconnected(pages: dict[str, Any]) -> None:
    ann = pages["ann"]
    ann.until(lambda: "Connected as" in ann.text("status"), "to reconnect")
    # The old room went with the old server; the page says so and goes on.
    ann.until(lambda: ann.text("side-error").startswith("lobby: Room "), "for the sync's word on it")
    ann.submit("room-name", "after the restart")
    ann.until(lambda: "after the restart" in ann.text("room-title"), "to be in a new room")
    ann.shot("web-after-restart")


@pytest_twisted.ensureDeferred
async def test_the_web_page_chats_with_browsers_and_seed_clients(browsers: Any, daemon_factory: Any) -> None:
    port = free_port()
    listen = ("--listen", f"tcp:{port}:interface=127.0.0.1")
    chatd = daemon_factory(*listen)
    await chatd.wait_listening()
    pages = await deferToThread(_first_part, browsers, port)
    chatd.signal("TERM")
    assert await chatd.wait_exit() == 0
    await deferToThread(_wait_disconnected, pages)
    again = daemon_factory(*listen)
    await again.wait_listening()
    await deferToThread(_wait_reconnected, pages)


def _signing_in(browsers: Callable[[], Any], port: int, tokens: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{port}/"
    # The token in the page's own URL fragment: signed in from the start.
    alice = Page(browsers(), f"{url}#token={tokens['alice']}", "alice")
    alice.until(lambda: alice.text("status") == "Connected as alice", "to be signed in")
    assert not alice.el("auth-form").is_displayed()
    assert "token" not in alice.driver.current_url  # out of the address bar once read
    # Without one, the page asks for it when the server says so.
    bob = Page(browsers(), url, "bob")
    bob.until(lambda: bob.el("auth-form").is_displayed(), "for the token field")
    bob.until(lambda: bob.text("auth-error") == "Authentication required", "for the server's reason")
    bob.shot("web-sign-in")
    bob.submit("token", "not a token")
    bob.until(lambda: bob.text("auth-error") == "Invalid token", "for the refusal")
    bob.submit("token", tokens["bob"])
    bob.until(lambda: bob.text("status") == "Connected as bob", "to be signed in")
    bob.until(lambda: not bob.el("auth-form").is_displayed(), "for the token field to go")
    bob.submit("room-name", "members only")
    bob.until(lambda: "members only" in bob.text("room-title"), "to be in the room")


@pytest_twisted.ensureDeferred
async def test_the_web_page_signs_in_with_a_token(browsers: Any, daemon_factory: Any, tmp_path: Path) -> None:
    import jwt

    secret = tmp_path / "jwt.key"
    secret.write_bytes(b"a shared secret of the test, long enough for HS256")
    tokens = {user: jwt.encode({"sub": user}, secret.read_bytes(), algorithm="HS256") for user in ("alice", "bob")}
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--auth", f"jwt:key={secret}",
                           "--guests", "deny")
    port = await chatd.wait_listening()
    await deferToThread(_signing_in, browsers, port, tokens)


def _reconnecting(browsers: Callable[[], Any], port: int) -> None:
    from websockets.sync.client import connect

    url = f"http://127.0.0.1:{port}/"
    ann = Page(browsers(), url, "ann")
    ann.submit("room-name", "steady")
    ann.until(lambda: "steady" in ann.text("room-title"), "to be in the room")
    room_id = ann.text("room-title").split("(")[-1].rstrip(")")
    with connect(f"ws://127.0.0.1:{port}", open_timeout=WAIT) as seed:
        seed.recv(timeout=WAIT)
        seed.send(json.dumps({"action": "join", "body": {"room_id": room_id}}))
        assert json.loads(seed.recv(timeout=WAIT))["status"] == "success"

        def say(text: str) -> None:
            seed.send(json.dumps({"action": "message", "body": text}))
            assert json.loads(seed.recv(timeout=WAIT))["message"] == "Message sent"

        say("first words")
        ann.until(lambda: any("first words" in m for m in ann.messages()), "for the first message")
        ann.submit("text", "mine before")
        assert json.loads(seed.recv(timeout=WAIT))["body"] == "mine before"
        # What is shown stays shown: the page adds to it, it does not redraw it.
        ann.driver.execute_script("document.querySelector('#messages li').dataset.mark = 'kept';")
        # The page loses its connection (and waits long before retrying by itself).
        ann.driver.execute_script("chatd.delay = 600000; chatd.ws.close();")
        ann.until(lambda: "reconnecting" in ann.text("status"), "to notice")
        for i in range(3):
            say(f"while away {i}")
        ann.driver.execute_script("chatd.connect();")
        ann.until(lambda: all(any(f"while away {i}" in m for m in ann.messages()) for i in range(3)),
                  "for what was said meanwhile")
        say("after")
        ann.until(lambda: any("after" in m for m in ann.messages()), "for the live message")
        texts = ann.messages()
        for text in ("first words", "mine before", *(f"while away {i}" for i in range(3)), "after"):
            assert sum(text in m for m in texts) == 1, (text, texts)
        assert ann.driver.execute_script("return document.querySelector('#messages li').dataset.mark") == "kept"
        ann.shot("web-recovered")


@pytest_twisted.ensureDeferred
async def test_the_web_page_gets_what_it_missed_once_after_reconnecting(browsers: Any, daemon_factory: Any) -> None:
    await _on_a_daemon(_reconnecting, browsers, daemon_factory)


def _owning(browsers: Callable[[], Any], port: int) -> None:
    from selenium.webdriver.common.by import By
    from websockets.sync.client import connect

    url = f"http://127.0.0.1:{port}/"
    ann = Page(browsers(), url, "ann")
    bob = Page(browsers(), url, "bob")
    ann.el("private").click()
    ann.submit("room-name", "den")
    ann.until(lambda: "den" in ann.text("room-title"), "to be in the room")
    room_id = ann.text("room-title").split("(")[-1].rstrip(")")
    # A guest is "a guest" to read; its client ID is there for whoever needs it.
    bob.until(lambda: bob.text("status") == "Connected as a guest", "to be a guest")
    bob_id = bob.el("status").get_attribute("title").removeprefix("client ID ")
    with connect(f"ws://127.0.0.1:{port}", open_timeout=WAIT) as outsider:
        outsider.recv(timeout=WAIT)
        outsider.send(json.dumps({"action": "join", "body": {"room_id": room_id}}))
        assert json.loads(outsider.recv(timeout=WAIT)) == {
            "status": "error", "message": f"Room {room_id} does not exist"}
    # The owner invites with the form; the room shows in the invitee's list.
    ann.until(lambda: ann.el("invite-form").is_displayed(), "for the invite form")
    ann.submit("invitee", bob_id)
    ann.until(lambda: any(f"Invited '{bob_id}'" in m for m in ann.messages()), "for the invitation")
    bob.el("refresh").click()
    bob.until(lambda: "den (private)" in bob.text("rooms"), "for the private room in the list")
    bob.el("rooms").find_element(By.TAG_NAME, "button").click()
    bob.until(lambda: "den" in bob.text("room-title"), "to be in the room")
    # Members show roles; the owner's buttons act on the others.
    ann.until(lambda: bob_id in ann.text("members"), "for the new member")
    ann.el("members").find_element(By.CSS_SELECTOR, f'li[data-client="{bob_id}"] .member-op').click()
    bob.until(lambda: f"{bob_id} (you) · moderator" in bob.text("members"), "to be a moderator")
    ann.shot("web-owner")
    # A direct message typed as a command: a conversation of its own, counted as unread.
    ann.submit("text", f"/msg {bob_id} just between us")
    bob.until(lambda: bob.el("dms").find_elements(By.CSS_SELECTOR, ".badge"), "for the direct message's count")
    bob.el("dms").find_element(By.TAG_NAME, "button").click()
    bob.until(lambda: any("just between us" in m for m in bob.messages()), "for the direct message")
    assert bob.text("room-title").endswith("(direct)")
    ann.el("members").find_element(By.CSS_SELECTOR, f'li[data-client="{bob_id}"] .member-kick').click()
    bob.until(lambda: "You were put out of den by" in bob.text("notice"), "to be put out")
    assert "den" not in bob.text("my-rooms")
    ann.until(lambda: bob_id not in ann.text("members"), "for the member list")
    bob.shot("web-kicked")


@pytest_twisted.ensureDeferred
async def test_the_web_page_runs_a_private_room(browsers: Any, daemon_factory: Any) -> None:
    await _on_a_daemon(_owning, browsers, daemon_factory)


def _over_tls(browsers: Callable[[], Any], port: int) -> None:
    # Chromium offers ALPN (h2, http/1.1), as every browser does.
    page = Page(browsers("--ignore-certificate-errors"), f"https://localhost:{port}/", "tls")
    page.until(lambda: "Connected" in page.text("status"), "to connect over wss://")
    page.submit("room-name", "Encrypted")
    page.until(lambda: "Encrypted" in page.text("room-title"), "to be in the room")


@pytest_twisted.ensureDeferred
async def test_the_web_page_over_https_and_wss(browsers: Any, daemon_factory: Any, tmp_path: Path) -> None:
    from tests.test_tls import self_signed

    key, cert = self_signed(tmp_path)
    chatd = daemon_factory("--listen", f"ssl:0:privateKey={key}:certKey={cert}:interface=127.0.0.1")
    port = await chatd.wait_listening()
    await deferToThread(_over_tls, browsers, port)


@pytest_twisted.ensureDeferred
async def test_a_head_request_gets_the_pages_headers_and_no_body(daemon_factory: Any) -> None:
    import socket

    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1")
    port = await chatd.wait_listening()
    # The first thing a person reads: where to go.
    await chatd.wait_for(rf"chatd \S+ serving http://localhost:{port}/ \(the web page; ".encode(), "the URL")

    def head(path: str) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            return read_until_eof(sock)

    page = await deferToThread(head, "/")
    get_head = page.partition(b"\r\n\r\n")
    assert page.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Type: text/html" in page
    assert get_head[2] == b""  # no body
    assert (await deferToThread(head, "/missing")).startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert (await deferToThread(head, "/missing")).endswith(b"\r\n\r\n")


def _expiring(browsers: Callable[[], Any], port: int, tokens: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{port}/"
    # Guests are allowed: the page offers sign-in all the same.
    ada = Page(browsers(), url, "ada")
    ada.until(lambda: ada.text("status") == "Connected as a guest", "to be a guest")
    ada.el("sign-in").click()
    ada.until(lambda: ada.el("auth-form").is_displayed(), "for the token field")
    ada.submit("token", tokens["short"])
    ada.until(lambda: ada.text("status") == "Connected as ada", "to be signed in")
    ada.submit("room-name", "Workshop")
    ada.until(lambda: "Workshop" in ada.text("room-title"), "to be in the room")
    ada.submit("text", "signed")
    ada.until(lambda: any("ada" in m and m.endswith("signed") for m in ada.messages()), "its message under its name")
    # The token runs out: the page says so and asks for another...
    ada.until(lambda: "Your sign-in expired" in ada.text("auth-why"), "the expiry to be said")
    assert ada.el("auth-form").is_displayed()
    ada.until(lambda: ada.text("status") == "Connected as a guest", "to be back as a guest")
    # ...which the app that signs its users in hands over (same origin).
    ada.driver.execute_script(
        "window.postMessage({type: 'chatd-token', token: arguments[0]}, location.origin)", tokens["long"])
    ada.until(lambda: ada.text("status") == "Connected as ada", "to be signed in again")
    ada.until(lambda: not ada.el("auth-form").is_displayed(), "for the token field to go")


@pytest_twisted.ensureDeferred
async def test_the_web_page_offers_sign_in_and_survives_an_expired_token(
    browsers: Any, daemon_factory: Any, tmp_path: Path,
) -> None:
    import time

    import jwt

    secret = tmp_path / "jwt.key"
    secret.write_bytes(b"a shared secret of the test, long enough for HS256")
    tokens = {
        "short": jwt.encode({"sub": "ada", "exp": int(time.time()) + 4}, secret.read_bytes(), algorithm="HS256"),
        "long": jwt.encode({"sub": "ada", "exp": int(time.time()) + 3600}, secret.read_bytes(), algorithm="HS256"),
    }
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--auth", f"jwt:key={secret}")
    port = await chatd.wait_listening()
    await deferToThread(_expiring, browsers, port, tokens)


def _persisting(browsers: Callable[[], Any], port: int, tokens: dict[str, str]) -> None:
    from selenium.webdriver.common.by import By
    from websockets.sync.client import connect

    url = f"http://127.0.0.1:{port}/"
    alice = Page(browsers(), f"{url}#token={tokens['alice']}", "alice")
    alice.until(lambda: alice.text("status") == "Connected as alice", "to be signed in")
    alice.el("persistent").click()
    alice.submit("room-name", "team")
    alice.until(lambda: "team" in alice.text("room-title"), "to be in the room")
    room_id = alice.text("room-title").split("(")[-1].rstrip(")")
    alice.until(lambda: "team" in alice.text("my-rooms"), "for the room among hers")
    with connect(f"ws://127.0.0.1:{port}", open_timeout=WAIT) as bob:
        def request(obj: dict[str, Any]) -> dict[str, Any]:
            bob.send(json.dumps(obj))
            while True:
                message = json.loads(bob.recv(timeout=WAIT))
                if "status" in message:
                    return message

        bob.recv(timeout=WAIT)
        request({"action": "auth", "body": {"token": tokens["bob"]}})
        request({"action": "join", "body": {"room_id": room_id}})
        for n in range(1, 81):
            assert request({"action": "message", "body": f"old {n}"})["message"] == "Message sent"
        # Alice reads as they come (the page is in view, at the bottom).
        alice.until(lambda: any("old 80" in m for m in alice.messages()), "for the messages")
        # Elsewhere, she has 3 unread in team.
        assert alice.el("persistent").is_selected()  # a lasting room too: it is there after a reload
        alice.submit("room-name", "elsewhere")
        alice.until(lambda: "elsewhere" in alice.text("room-title"), "to be elsewhere")
        for n in range(1, 4):
            request({"action": "message", "body": f"new {n}"})
    alice.until(lambda: _badge(alice, "my-rooms", room_id) == "3", "for 3 unread, counted as they came")
    # A reload: signed in still (this tab keeps the token), and the count is
    # the store's, from her read marker, through sync.
    alice.driver.refresh()
    alice.until(lambda: alice.text("status") == "Connected as alice", "to be signed in after the reload")
    alice.until(lambda: _badge(alice, "my-rooms", room_id) == "3", "for 3 unread, from the store")
    assert alice.text("room-title").startswith("elsewhere ")
    alice.shot("web-persistent-rooms", docs=True)
    # Back in team: the latest page, then older ones as she scrolls up, to the first.
    alice.el("my-rooms").find_element(By.CSS_SELECTOR, f'li[data-room="{room_id}"] button').click()
    alice.until(lambda: any("new 3" in m for m in alice.messages()), "for the new messages")
    alice.until(lambda: not alice.el("my-rooms").find_elements(By.CSS_SELECTOR, ".badge"), "for no unread")
    for _ in range(5):
        alice.driver.execute_script("document.getElementById('messages').scrollTop = 0")
        if any(m.endswith("old 1") for m in alice.messages()):
            break
        alice.until(lambda: len(alice.messages()) > 50, "for older messages")
    alice.until(lambda: any(m.endswith("old 1") for m in alice.messages()), "for the first message")
    said = [m for m in alice.messages() if "old " in m or "new " in m]
    assert [m.rsplit("old ", 1)[-1] for m in said[:3]] == ["1", "2", "3"] and said[-1].endswith("new 3"), said
    assert len(said) == 83, said  # each once
    texts = alice.messages()
    assert texts.index("New") == [i for i, m in enumerate(texts) if m.endswith("new 1")][0] - 1
    # Scrolled up, she is not moved by what comes: a marker says it is there.
    with connect(f"ws://127.0.0.1:{port}", open_timeout=WAIT) as bob:
        bob.recv(timeout=WAIT)
        for command in ({"action": "auth", "body": {"token": tokens["bob"]}},
                        {"action": "join", "body": {"room_id": room_id}}):
            bob.send(json.dumps(command))
            while "status" not in (reply := json.loads(bob.recv(timeout=WAIT))):
                pass
            assert reply["status"] == "success", reply
        alice.driver.execute_script("document.getElementById('messages').scrollTop = 0")
        bob.send(json.dumps({"action": "message", "body": "while you scroll"}))
        alice.until(lambda: alice.el("new-below").is_displayed(), "for the new-messages marker")
        assert alice.text("new-below") == "1 new message ↓"
        assert alice.driver.execute_script("return document.getElementById('messages').scrollTop") < 50
        alice.el("new-below").click()
        alice.until(lambda: not alice.el("new-below").is_displayed(), "for the marker to go")
        assert alice.driver.execute_script(
            "const l = document.getElementById('messages'); return l.scrollHeight - l.scrollTop - l.clientHeight") < 40
        assert alice.messages()[-1].endswith("while you scroll")
    # Her owner's button deletes it, once confirmed.
    alice.el("delete").click()
    alice.driver.switch_to.alert.accept()
    alice.until(lambda: "Deleted room 'team'" in alice.text("notice"), "for the deletion")
    alice.until(lambda: "team" not in alice.text("my-rooms"), "for the room to leave her list")


@pytest_twisted.ensureDeferred
async def test_the_web_page_keeps_persistent_rooms_unread_counts_and_all_history(
        browsers: Any, daemon_factory: Any, tmp_path: Path) -> None:
    import jwt

    secret = tmp_path / "jwt.key"
    secret.write_bytes(b"a shared secret of the test, long enough for HS256")
    tokens = {user: jwt.encode({"sub": user}, secret.read_bytes(), algorithm="HS256") for user in ("alice", "bob")}
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1", "--auth", f"jwt:key={secret}",
                           "--store", f"sqlite:{tmp_path}/chatd.db", "--rate-messages", "0", "--history-size", "20")
    port = await chatd.wait_listening()
    await deferToThread(_persisting, browsers, port, tokens)


# The contrast of every kind of text on the page with what is behind it
# (WCAG 2's formula), for the elements that carry it.
CONTRAST = """
const lum = (c) => {
  const [r, g, b] = c.match(/[0-9.]+/g).slice(0, 3).map((v) => {
    v = Number(v) / 255;
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
};
const behind = (node) => {
  for (; node && node.nodeType === 1; node = node.parentElement) {
    const bg = getComputedStyle(node).backgroundColor;
    const alpha = bg.match(/[0-9.]+/g)[3];
    if (alpha === undefined || Number(alpha) > 0.5) return bg;
  }
  return "rgb(255, 255, 255)";
};
const found = [];
for (const selector of arguments[0]) {
  for (const node of document.querySelectorAll(selector)) {
    if (!node.offsetParent && getComputedStyle(node).position !== "fixed") continue;
    const [a, b] = [lum(getComputedStyle(node).color), lum(behind(node))];
    found.push([selector, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)]);
  }
}
return found;
"""
TEXTS = ["body", "h1", "h2", ".meta", ".msg .who", ".msg.mine .who", ".msg .body", ".event", ".day span",
         ".badge", "button", "button.quiet", "input", ".status", ".convs .name", ".tag", ".notice", ".error"]

# Every control a person can reach says what it is (a label, its text, or aria-label).
UNLABELLED = """
return [...document.querySelectorAll("input, button")].filter((c) => {
  if (c.closest("[hidden]")) return false;
  const named = c.getAttribute("aria-label") || c.textContent.trim()
    || (c.id && document.querySelector(`label[for="${c.id}"]`)) || c.closest("label");
  return !named;
}).map((c) => c.outerHTML);
"""


def _checked_contrast(page: Page, scheme: str) -> None:
    ratios = page.driver.execute_script(CONTRAST, TEXTS)
    assert len({selector for selector, _ in ratios}) >= 12, ratios
    low = [(selector, round(ratio, 2)) for selector, ratio in ratios if ratio < 4.5]
    assert not low, f"{scheme}: below WCAG AA's 4.5:1: {low}"


def _badge(page: Page, list_id: str, room_id: str) -> str:
    from selenium.webdriver.common.by import By

    badges = page.el(list_id).find_elements(By.CSS_SELECTOR, f'li[data-room="{room_id}"] .badge')
    return str(badges[0].text) if badges else ""


def _open(page: Page, room_id: str) -> None:
    from selenium.webdriver.common.by import By

    page.el("my-rooms").find_element(By.CSS_SELECTOR, f'li[data-room="{room_id}"] button').click()
    page.until(lambda: f"({room_id})" in page.text("room-title"), f"to show room {room_id}")


def _two_rooms(browsers: Callable[[], Any], port: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url = f"http://127.0.0.1:{port}/"
    ann = Page(browsers(), url, "ann")
    ann.submit("nick", "Ann")
    ann.until(lambda: ann.text("status") == "Connected as Ann", "for the nick")
    rooms = {}
    for name in ("Den", "Attic"):
        ann.submit("room-name", name)
        ann.until(lambda n=name: ann.text("room-title").startswith(n + " "), f"to be in {name}")
        rooms[name] = ann.text("room-title").split("(")[-1].rstrip(")")
    # Ann is in both: the sidebar lists them, the last one shown.
    assert ann.text("my-rooms").split("\n") == ["# Den", "# Attic"]

    bob = Page(browsers(), url, "bob")
    bob.submit("nick", "Bob")
    bob.until(lambda: "Attic" in bob.text("rooms") and "Den" in bob.text("rooms"), "for the room list")
    for name in ("Den", "Attic"):
        bob.el("rooms").find_element(By.CSS_SELECTOR, f'li[data-room="{rooms[name]}"] button').click()
        bob.until(lambda n=name: bob.text("room-title").startswith(n + " "), f"to be in {name}")
    _open(bob, rooms["Den"])

    # Ann talks in the Attic while Bob looks at the Den: his count rises.
    for n, text in enumerate(("up in the attic", "anyone?"), start=1):
        ann.submit("text", text)
        bob.until(lambda n=n: _badge(bob, "my-rooms", rooms["Attic"]) == str(n), f"for {n} unread in the Attic")
    assert bob.driver.title == "(2) chatd"
    # Keyboard only: Tab to the Attic in the sidebar, Enter opens it; the count clears.
    body = bob.driver.find_element(By.TAG_NAME, "body")
    body.click()
    for _ in range(40):
        active = bob.driver.switch_to.active_element
        if active.get_attribute("class") == "conv" and "Attic" in active.text:
            break
        active.send_keys(Keys.TAB)
    else:
        raise AssertionError("the Attic cannot be reached with Tab")
    bob.driver.switch_to.active_element.send_keys(Keys.ENTER)
    bob.until(lambda: bob.text("room-title").startswith("Attic "), "to show the Attic")
    bob.until(lambda: _badge(bob, "my-rooms", rooms["Attic"]) == "", "for the count to clear")
    said = [m for m in bob.messages() if "attic" in m or "anyone" in m]
    assert len(said) == 2 and said[0].startswith("Ann") and said[1] == "anyone?", said  # one group, Ann's
    bob.submit("text", "heard you")
    ann.until(lambda: any(m.endswith("heard you") for m in ann.messages()), "for Bob's reply in the Attic")
    # And in the Den, while Ann looks at the Attic.
    _open(bob, rooms["Den"])
    bob.submit("text", "down in the den")
    ann.until(lambda: _badge(ann, "my-rooms", rooms["Den"]) == "1", "for 1 unread in the Den")
    _open(ann, rooms["Den"])
    ann.until(lambda: any(m.endswith("down in the den") for m in ann.messages()), "for Bob's message in the Den")
    assert not any("heard you" in m for m in ann.messages())  # each room its own conversation
    ann.until(lambda: "Bob" in ann.text("members"), "for Bob among the Den's members")
    ann.shot("web-rooms", docs=True)  # the README's picture

    # Bob's page goes away for a while; what is said meanwhile is counted after a reload.
    bob.driver.execute_script("chatd.delay = 600000; chatd.ws.close();")
    bob.until(lambda: "reconnecting" in bob.text("status"), "to notice")
    _open(ann, rooms["Attic"])
    ann.submit("text", "while you were away")
    bob.driver.refresh()
    bob.until(lambda: bob.text("status") == "Connected as Bob", "to be back, with its nick")
    bob.until(lambda: bob.text("room-title").startswith("Den "), "to show the room it showed")
    bob.until(lambda: _badge(bob, "my-rooms", rooms["Attic"]) == "1", "for what came meanwhile, counted")
    assert bob.text("my-rooms").split("\n")[:2] == ["# Den", "# Attic"]
    _open(bob, rooms["Attic"])
    bob.until(lambda: any(m.endswith("while you were away") for m in bob.messages()), "for the message missed")
    texts = bob.messages()
    assert "New" in texts and texts.index("New") < [i for i, m in enumerate(texts) if "away" in m][0]
    bob.submit("text", "back")
    ann.until(lambda: any(m.endswith("back") for m in ann.messages()), "for Bob, back in the Attic")

    # A phone: the conversation fills the screen; the rooms are one tap away.
    bob.driver.set_window_size(375, 740)
    bob.until(lambda: not bob.el("sidebar").is_displayed(), "for the sidebar to fold away")
    assert bob.el("messages").is_displayed() and bob.el("text").is_displayed()
    assert bob.driver.execute_script("return document.documentElement.scrollWidth") <= 375
    bob.shot("web-phone", docs=True)
    bob.el("menu").click()
    bob.until(lambda: bob.el("sidebar").is_displayed(), "for the sidebar")
    bob.shot("web-phone-rooms")
    bob.el("my-rooms").find_element(By.CSS_SELECTOR, f'li[data-room="{rooms["Den"]}"] button').click()
    bob.until(lambda: not bob.el("sidebar").is_displayed() and bob.text("room-title").startswith("Den "),
              "for the Den, the sidebar folded")

    # Readable, light and dark; every control labelled.
    for page in (ann, bob):
        assert page.driver.execute_script(UNLABELLED) == []
        _checked_contrast(page, "light")
        page.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {
            "features": [{"name": "prefers-color-scheme", "value": "dark"}]})
        _checked_contrast(page, "dark")
    ann.shot("web-rooms-dark", docs=True)


@pytest_twisted.ensureDeferred
async def test_two_people_chat_in_two_rooms_and_a_reload_catches_up(browsers: Any, daemon_factory: Any) -> None:
    await _on_a_daemon(_two_rooms, browsers, daemon_factory)


@pytest_twisted.ensureDeferred
async def test_the_page_loads_in_one_round_trip(daemon_factory: Any) -> None:
    """Every file of the page, gzipped, fits in TCP's first window (10
    segments, about 14 KB), and the page names its modules up front
    (modulepreload): each file is one round trip, and all but the page
    itself are asked for together."""
    import gzip
    import socket

    from chatd.web import PAGES, pages

    GZIPPED = pages(compressed=True)

    sizes = {path: len(response.partition(b"\r\n\r\n")[2]) for path, response in GZIPPED.items()
             if path != "/index.html"}
    assert set(sizes) == {"/", "/app.js", "/view.js", "/style.css"}
    assert max(sizes.values()) < 14_600 and sum(sizes.values()) < 20_000, sizes
    for path, response in GZIPPED.items():
        assert gzip.decompress(response.partition(b"\r\n\r\n")[2]) == PAGES[path].partition(b"\r\n\r\n")[2]
    chatd = daemon_factory("--listen", "tcp:0:interface=127.0.0.1")
    port = await chatd.wait_listening()

    def get(path: str) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept-Encoding: gzip, br\r\n\r\n".encode())
            return read_until_eof(sock)

    head, _, body = (await deferToThread(get, "/")).partition(b"\r\n\r\n")
    assert b"Content-Encoding: gzip\r\n" in head
    page = gzip.decompress(body)
    for module in (b"/app.js", b"/view.js"):
        assert b'rel="modulepreload" href="' + module + b'"' in page
    assert (await deferToThread(get, "/view.js")).startswith(b"HTTP/1.1 200 OK\r\n")
