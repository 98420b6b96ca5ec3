"""A real Dovecot IMAP server for tests: its own configuration, one test user, maildir in a temporary directory.

Nothing outside that directory is touched: Dovecot is started with ``-c`` on a
configuration written here, listens on a loopback port, and keeps its sockets,
state, log and mail under the directory. As root, Dovecot's login processes
must run as its unprivileged ``dovenull`` user and mail may not be accessed
as uid 0, so the directory is made traversable and the maildir belongs to
``nobody``; as any other user everything runs as that user.
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
from pathlib import Path

from imapclient import IMAPClient

from tests.support.gateway import free_port

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
auth_mechanisms = plain login
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
}}
userdb {{
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
}}
"""


class Dovecot:
    """``start()`` / ``stop()`` a Dovecot on ``port``; ``client()`` logs in as the test user."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
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
        config = self.root / "dovecot.conf"
        config.write_text(
            _CONFIG.format(
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

    def client(self) -> IMAPClient:
        client = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=10)
        client.login(self.user, self.password)
        return client

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
