"""The exporter's password file, as its init container writes it (the ConfigMap's exporter-auth.sh run
by sh): the JSON object redis_exporter's -redis.password-file reads, from the address it scrapes to the
password of the mounted Secret, found the way the exporter looks it up (before v1.70: the address as
given; v1.70 and later, the default image's v1.97 among them: the address with the user name in it).
Nothing but that file holds the password."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from redis_messaging.builders import config

PASSWORDS = ["Gen3rat3dAlnum32charsXXXXXXXXXXX", 'a "quoted" \\ back\\slash/p%s+w=rd']
ADDRESSES = ["redis://127.0.0.1:6379", "redis://127.0.0.1:26379",
             "rediss://orders-redis-0.orders-redis-headless.shop.svc.cluster.local:6379"]


def lookup_v170(password_map: dict[str, str], address: str, user: str) -> str | None:
    """redis_exporter >= v1.70, the default image's v1.97 (lookupPasswordInPasswordMap): the URL with ``user``
    as its userinfo."""
    parts = urlsplit(address)
    return password_map.get(urlunsplit(parts._replace(netloc=f"{user}@{parts.netloc}")))


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("address", ADDRESSES)
def test_the_file_maps_the_scraped_address_to_the_password(tmp_path: Path, password: str, address: str) -> None:
    users, out = tmp_path / "users", tmp_path / "exporter-auth"
    users.mkdir()
    out.mkdir()
    (users / config.EXPORTER_FILE).write_text(password)
    script = tmp_path / config.EXPORTER_AUTH_SCRIPT
    script.write_text(config.EXPORTER_AUTH_SH)
    target = out / config.EXPORTER_PASSWORD_FILE
    env = {"PATH": os.environ["PATH"], "RMSG_USERS_DIR": str(users), "REDIS_ADDR": address,
           "REDIS_USER": config.EXPORTER_USER, "REDIS_PASSWORD_FILE": str(target)}
    done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert password not in done.stdout + done.stderr
    password_map = json.loads(target.read_text())
    assert password_map[address] == password  # before v1.70 (an image pinned to an older tag)
    assert lookup_v170(password_map, address, config.EXPORTER_USER) == password
    assert set(password_map.values()) == {password}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in out.iterdir()] == [config.EXPORTER_PASSWORD_FILE]  # no temporary file left


def test_a_missing_secret_fails_the_init_container(tmp_path: Path) -> None:
    script = tmp_path / config.EXPORTER_AUTH_SCRIPT
    script.write_text(config.EXPORTER_AUTH_SH)
    env = {"PATH": os.environ["PATH"], "RMSG_USERS_DIR": str(tmp_path / "none"), "REDIS_ADDR": ADDRESSES[0],
           "REDIS_USER": config.EXPORTER_USER, "REDIS_PASSWORD_FILE": str(tmp_path / "p.json")}
    done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert not (tmp_path / "p.json").exists()
