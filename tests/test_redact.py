"""Camera credentials never leave the config: redaction of URLs, ${VAR} credentials, check-config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from emopipe import config as config_mod
from emopipe.config import ConfigError
from emopipe.redact import redact

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("rtsp://admin:pass@10.0.0.5/stream1", "rtsp://***:***@10.0.0.5/stream1"),
        ("rtsp://admin:p@ss:w0rd@cam.local:8554/live?x=1", "rtsp://***:***@cam.local:8554/live?x=1"),
        ("http://viewer@cam/mjpg", "http://***@cam/mjpg"),
        ("https://cam/stream.m3u8?token=abc123&quality=hd", "https://cam/stream.m3u8?token=***&quality=hd"),
        ("rtsp://cam/s?Password=hunter2&API-Key=k", "rtsp://cam/s?Password=***&API-Key=***"),
        ("rtsp://10.0.0.5:554/stream1", "rtsp://10.0.0.5:554/stream1"),
        ("clips/office.mp4", "clips/office.mp4"),
        ("0", "0"),
        ("/data/frames", "/data/frames"),
    ],
)
def test_redact_masks_user_info_and_secret_query_values_only(uri: str, shown: str) -> None:
    assert redact(uri) == shown
    for secret in ("pass", "p@ss:w0rd", "abc123", "hunter2", "admin", "viewer"):
        if secret in uri and secret not in shown:
            assert secret not in redact(uri)


def test_a_source_password_can_come_from_the_environment(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text('[[sources]]\nid = "door"\nuri = "rtsp://viewer:${DOOR_PASSWORD}@127.0.0.1:8554/cam"\n')
    cfg = config_mod.load(site, environ={"DOOR_PASSWORD": "s3cret!"})
    assert cfg.sources[0].uri == "rtsp://viewer:s3cret!@127.0.0.1:8554/cam"
    with pytest.raises(ConfigError, match=r"sources\[0\]\.uri' uses \$\{DOOR_PASSWORD\}, which is not set"):
        config_mod.load(site, environ={})


def test_check_config_prints_the_sources_without_their_credentials(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text('[[sources]]\nid = "door"\nuri = "rtsp://viewer:${DOOR_PASSWORD}@127.0.0.1:8554/cam?token=t0k3n"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.launcher", "check-config", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "DOOR_PASSWORD": "s3cret!"},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert 'uri = "rtsp://***:***@127.0.0.1:8554/cam?token=***"' in proc.stdout
    assert "s3cret" not in proc.stdout + proc.stderr and "t0k3n" not in proc.stdout + proc.stderr


def test_a_camera_that_cannot_be_opened_is_logged_without_its_password(tmp_path: Path) -> None:
    from emopipe.config import SourceConfig
    from services.capture.sources import SourceError, open_video

    with pytest.raises(SourceError) as err:
        open_video(SourceConfig(id="door", uri="rtsp://viewer:s3cret@127.0.0.1:9/cam"), timeout_s=2.0)
    assert "s3cret" not in str(err.value) and "rtsp://***:***@127.0.0.1:9/cam" in str(err.value)


@pytest.mark.parametrize("command", [["recall", "--frames", "5"], ["bench", "--smoke", "--source"]])
def test_recall_and_bench_name_a_missing_url_video_without_its_password(command: list[str]) -> None:
    url = "rtsp://viewer:Pw-9x7q@127.0.0.1:9/x"
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.launcher", *command, url], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "rtsp://***:***@127.0.0.1:9/x" in proc.stderr and "Pw-9x7q" not in proc.stdout + proc.stderr
