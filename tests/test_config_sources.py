"""Configuration from files as Docker and Kubernetes hand secrets over, and misspelt variables named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from intake.config import load


def test_an_option_is_read_from_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "kafka").write_text("pa55word-from-a-secret\n")
    monkeypatch.setenv("INTAKE_KAFKA__SASL_PASSWORD_FILE", str(tmp_path / "kafka"))
    assert load().kafka.sasl_password.get_secret_value() == "pa55word-from-a-secret"


def test_every_file_in_the_secrets_directory_sets_its_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "intake_telegram__token").write_text("123456:ABCDEFGHIJKLMNOPQRSTUVWXYZ\n")
    (tmp_path / "INTAKE_WEB_FORM__CSRF_SECRET").write_text("form-secret-0123456789abcdef")
    (tmp_path / "unrelated.pem").write_text("not ours")
    monkeypatch.setenv("INTAKE_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("INTAKE_TELEGRAM__ENABLED", "true")
    settings = load()
    assert settings.telegram.token.get_secret_value() == "123456:ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    assert settings.web_form.csrf_secret.get_secret_value() == "form-secret-0123456789abcdef"


def test_a_variable_set_directly_wins_over_the_secrets_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "INTAKE_KAFKA__TOPIC").write_text("from-file")
    monkeypatch.setenv("INTAKE_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("INTAKE_KAFKA__TOPIC", "from-env")
    assert load().kafka.topic == "from-env"


def test_a_variable_and_its_file_together_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "topic").write_text("from-file")
    monkeypatch.setenv("INTAKE_KAFKA__TOPIC_FILE", str(tmp_path / "topic"))
    monkeypatch.setenv("INTAKE_KAFKA__TOPIC", "from-env")
    with pytest.raises(ValueError, match="both INTAKE_KAFKA__TOPIC and INTAKE_KAFKA__TOPIC_FILE"):
        load()


def test_check_config_names_a_misspelt_section_and_an_unreadable_file(tmp_path: Path):
    import os

    env = {**os.environ, "INTAKE_CONFIG": "", "INTAKE_KAKFA__TOPIC": "complaints"}
    misspelt = subprocess.run([sys.executable, "-m", "intake.cli", "check-config"], capture_output=True, text=True, env=env, timeout=60)
    env = {**os.environ, "INTAKE_CONFIG": "", "INTAKE_KAFKA__SASL_PASSWORD_FILE": str(tmp_path / "absent")}
    unreadable = subprocess.run([sys.executable, "-m", "intake.cli", "check-config"], capture_output=True, text=True, env=env, timeout=60)
    assert misspelt.returncode == 2 and "INTAKE_KAKFA__TOPIC" in misspelt.stderr and "'kakfa'" in misspelt.stderr
    assert unreadable.returncode == 2 and "INTAKE_KAFKA__SASL_PASSWORD_FILE: cannot read" in unreadable.stderr
