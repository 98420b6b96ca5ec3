"""A real Dovecot IMAP server for tests: its own configuration, one test user, maildir in a temporary directory.

Nothing outside that directory is touched: Dovecot is started with ``-c`` on a
configuration written here, listens on a loopback port, and keeps its sockets,
state, log and mail under the directory. As root, Dovecot's login processes
must run as its unprivileged ``dovenull`` user and mail may not be accessed
as uid 0, so the directory is made traversable and the maildir belongs to
``nobody``; as any other user everything runs as that user.

Given an authorization server (``tests/support/oauth_server.py``) it also
takes XOAUTH2 and OAUTHBEARER, with an oauth2 passdb that asks that server
about each token (introspection), as a Dovecot behind an identity provider does.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from imapclient import IMAPClient

from tests.support.gateway import free_port
from tests.support.oauth_server import RESOURCE_ID, RESOURCE_SECRET, AuthorizationServer

USER = "complaints@example.test"
PASSWORD = "imap-password-for-tests"

_CONFIG = """\
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
ssl = no
# Loopback only: the test user's password may travel in clear.
disable_plaintext_auth = no
auth_mechanisms = plain login{oauth_mechanisms}
default_login_user = {login_user}
default_internal_user = {internal_user}
default_internal_group = {internal_group}
first_valid_uid = {mail_uid}
first_valid_gid = {mail_gid}
mail_location = maildir:{root}/mail/%u
# IDLE learns of new mail through inotify; this is the fallback when inotify is not available.
mailbox_idle_check_interval = 1 secs
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
  mechanisms = plain login
}}
{oauth_passdb}userdb {{
  driver = static
  args = uid={mail_uid} gid={mail_gid} home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  chroot =
}}
service anvil {{
  chroot =
{anvil}}}
"""

# Tokens are checked by the authorization server (RFC 7662 introspection, POSTed with Dovecot's own credentials);
# the mailbox a token is for is its "email", which must be the user named in XOAUTH2 / OAUTHBEARER.
_OAUTH2_PASSDB = """\
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {root}/dovecot-oauth2.conf.ext
}}
"""
_OAUTH2_SETTINGS = """\
introspection_url = {introspection_url}
introspection_mode = post
client_id = {client_id}
client_secret = {client_secret}
username_attribute = email
active_attribute = active
active_value = true
"""
# Refused tokens are provoked on purpose; without this, every login from 127.0.0.1 after one (the tests' own,
# with the password) would be delayed by up to 15 s.
_NO_PENALTY = """\
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
"""


class Dovecot:
    """``start()`` / ``stop()`` a Dovecot on ``port``; ``client()`` logs in as the test user."""

    def __init__(self, port: int | None = None, *, oauth: AuthorizationServer | None = None) -> None:
        self.port = port or free_port()
        self.oauth = oauth
        # Not under pytest's tmp_path: that is private to root (0700), and Dovecot's login and auth processes
        # run as other users when started by root.
        self.root = Path(tempfile.mkdtemp(prefix="intake-dovecot-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.user = USER
        self.password = PASSWORD

    @property
    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _write_config(self) -> Path:
        os.chmod(self.root, 0o755)
        (self.root / "mail").mkdir(exist_ok=True)
        (self.root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
        os.chmod(self.root / "passwd", 0o644)
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            mail_uid, mail_gid = nobody.pw_uid, nobody.pw_gid
            login_user, internal_user, internal_group = "dovenull", "dovecot", "dovecot"
            os.chown(self.root / "mail", mail_uid, mail_gid)
        else:
            mail_uid, mail_gid = os.getuid(), os.getgid()
            login_user = internal_user = pwd.getpwuid(mail_uid).pw_name
            internal_group = grp.getgrgid(mail_gid).gr_name
        if self.oauth is not None:
            settings = self.root / "dovecot-oauth2.conf.ext"
            settings.write_text(
                _OAUTH2_SETTINGS.format(
                    introspection_url=self.oauth.introspection_url, client_id=RESOURCE_ID, client_secret=RESOURCE_SECRET
                )
            )
            os.chmod(settings, 0o644)  # read by the auth process, which runs as Dovecot's own user
        config = self.root / "dovecot.conf"
        config.write_text(
            _CONFIG.format(
                oauth_mechanisms=" xoauth2 oauthbearer" if self.oauth else "",
                oauth_passdb=_OAUTH2_PASSDB.format(root=self.root) if self.oauth else "",
                anvil=_NO_PENALTY.format() if self.oauth else "",
                root=self.root,
                port=self.port,
                login_user=login_user,
                internal_user=internal_user,
                internal_group=internal_group,
                mail_uid=mail_uid,
                mail_gid=mail_gid,
            )
        )
        return config

    def start(self, timeout: float = 20) -> None:
        binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
        if not Path(binary).exists():
            raise RuntimeError("dovecot is not installed (Debian: apt-get install dovecot-imapd)")
        config = self._write_config()
        # Its own process group, so stop() reaches the imap processes too and not only the master.
        self.process = subprocess.Popen(
            [binary, "-F", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                errors = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"dovecot exited: {errors}{self.log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(100).startswith(b"* OK"):
                        return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"dovecot did not answer on port {self.port}: {self.log[-2000:]}")

    def stop(self) -> None:
        if self.process is None:
            return
        # The master alone would leave each imap process to notice the shutdown in its own time
        # (seen: 9 s for one in IDLE); a server going away closes every connection at once.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def remove(self) -> None:
        """Stop it and delete its directory (mail, log and all)."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def kick(self) -> None:
        """End every session of the test user, as Exchange Online does when a session's token expires."""
        binary = shutil.which("doveadm") or "/usr/bin/doveadm"
        subprocess.run([binary, "-c", str(self.root / "dovecot.conf"), "kick", self.user], check=True, capture_output=True)

    def client(self) -> IMAPClient:
        client = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=10)
        client.login(self.user, self.password)
        return client

    def new_folder(self) -> str:
        """A folder of its own for one test: the tests of a module share one Dovecot."""
        name = f"Complaints-{uuid.uuid4().hex[:8]}"
        with self.client() as client:
            client.create_folder(name)
        return name

    def __enter__(self) -> "Dovecot":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def mailbox_config(self, name: str = "complaints", **options: object) -> dict[str, object]:
        """The gateway's ``[[email.imap]]`` entry for this server."""
        return {
            "name": name,
            "host": "127.0.0.1",
            "port": self.port,
            "security": "none",
            "username": self.user,
            "password": self.password,
            **options,
        }
