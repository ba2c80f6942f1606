"""The config schema: defaults in one place, unknown keys and wrong types named."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from emopipe import config
from emopipe.config import Config, ConfigError

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_shipped_default_config_equals_the_built_in_defaults() -> None:
    assert config.load(REPO / "deploy" / "emopipe.toml") == Config()


def test_detect_defaults_equal_the_acceptance_reference_haar_parameters() -> None:
    d = Config().detect
    assert (d.scale_factor, d.min_neighbors, d.min_size, d.downscale) == (1.1, 5, 40, 1.0)


def test_unknown_key_is_an_error_naming_its_dotted_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'detect\.scale_factr'"):
        config.load(write(tmp_path, "[detect]\nscale_factr = 1.2\n"))


def test_unknown_key_inside_a_source_names_the_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'sources\[0\]\.url'"):
        config.load(write(tmp_path, '[[sources]]\nurl = "x.mp4"\n'))


def test_unknown_section_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'detector'"):
        config.load(write(tmp_path, "[detector]\n"))


def test_wrong_type_names_key_expected_type_and_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'detect\.min_neighbors' must be int, got '5'"):
        config.load(write(tmp_path, '[detect]\nmin_neighbors = "5"\n'))
    with pytest.raises(ConfigError, match=r"'viewer\.port' must be int, got True"):
        config.load(write(tmp_path, "[viewer]\nport = true\n"))


def test_integer_is_accepted_where_a_float_is_expected(tmp_path: Path) -> None:
    assert config.load(write(tmp_path, "[detect]\nscale_factor = 2\n")).detect.scale_factor == 2.0


def test_invalid_values_are_errors_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"detect\.scale_factor"):
        config.load(write(tmp_path, "[detect]\nscale_factor = 1.0\n"))
    with pytest.raises(ConfigError, match="duplicate source ids"):
        config.load(write(tmp_path, '[[sources]]\nuri = "a"\n[[sources]]\nuri = "b"\n'))
    with pytest.raises(ConfigError, match=r"sources\[0\]\.id"):
        config.load(write(tmp_path, '[[sources]]\nid = "cam 0"\nuri = "a"\n'))


def test_missing_or_broken_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml does not exist"):
        config.load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[detect\n"))


def test_written_config_reads_back_identically(tmp_path: Path) -> None:
    cfg = config.from_dict(
        {"sources": [{"id": "a", "uri": 'C:\\x "y".mp4', "loop": True}], "detect": {"cameras": ["a"]}}
    )
    assert config.load(write(tmp_path, config.to_toml(cfg))) == cfg


@pytest.mark.parametrize(
    ("uris", "realtime", "lossless"),
    [
        (["v.mp4"], False, True),
        (["v.mp4"], True, False),
        (["0"], False, False),
        (["v.mp4", "rtsp://h/s"], False, False),
    ],
)
def test_files_are_analysed_losslessly_unless_realtime_or_a_source_is_live(
    uris: list[str], realtime: bool, lossless: bool
) -> None:
    cfg = config.from_dict(
        {"pipeline": {"realtime": realtime}, "sources": [{"id": f"c{i}", "uri": u} for i, u in enumerate(uris)]}
    )
    assert cfg.lossless is lossless


def test_environment_variables_override_the_file_and_are_typed(tmp_path: Path) -> None:
    path = write(tmp_path, "[detect]\nmin_neighbors = 3\n")
    env = {"EMOPIPE__DETECT__MIN_NEIGHBORS": "7", "EMOPIPE__SINK__EVENTS": "out.jsonl", "HOME": "/x"}
    cfg = config.load(path, environ=env)
    assert (cfg.detect.min_neighbors, cfg.sink.events) == (7, "out.jsonl")


def test_unknown_environment_override_is_an_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'detect\.min_neigbors'"):
        config.load(None, environ={"EMOPIPE__DETECT__MIN_NEIGBORS": "7"})
    with pytest.raises(ConfigError, match="EMOPIPE__DETECT: expected"):
        config.load(None, environ={"EMOPIPE__DETECT": "7"})


def test_a_removed_key_is_an_error_saying_what_replaced_it() -> None:
    with pytest.raises(ConfigError, match=r"key 'detect\.face_size' was removed: .*input_size.*classify\.model"):
        config.from_dict({"detect": {"face_size": 48}})
    with pytest.raises(ConfigError, match=r"key 'sink\.match_timeout_s' was removed: .*carries its frame"):
        config.from_dict({"sink": {"match_timeout_s": 2.0}})


def test_several_files_are_read_in_order_a_later_ones_keys_win_section_by_section(tmp_path: Path) -> None:
    shared = tmp_path / "shared.toml"
    shared.write_text('[pipeline]\nmode = "live"\n[detect]\nmin_neighbors = 3\nmin_size = 30\n')
    cameras = tmp_path / "cameras.toml"
    cameras.write_text('[[sources]]\nid = "door"\nuri = "rtsp://cam/door"\n[detect]\nmin_size = 50\n')
    cfg = config.load([shared, cameras], environ={})
    assert cfg.pipeline.mode == "live" and not cfg.lossless
    assert (cfg.detect.min_neighbors, cfg.detect.min_size) == (3, 50)
    assert cfg.cameras == ["door"]
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.load([shared, tmp_path / "missing.toml"], environ={})


def test_an_explicit_mode_wins_over_what_the_sources_say() -> None:
    live_file = [config.SourceConfig(id="a", uri="clip.mp4")]
    assert config.Config(sources=live_file).lossless
    forced = config.replace(config.Config(sources=live_file), "pipeline", mode="live")
    assert not forced.lossless
    assert config.replace(config.Config(), "pipeline", mode="lossless").lossless  # a worker knows no source
    with pytest.raises(config.ConfigError, match="pipeline.mode"):
        config.validate(config.replace(config.Config(), "pipeline", mode="sometimes"))


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("capture", "folder_fps", 0.0),  # a ZeroDivisionError in a reader thread: capture never ended
        ("bus", "subscribe_timeout_s", -5.0),  # a capture restart loop
        ("sink", "record_fps", 0.0),
        ("pipeline", "stop_timeout_s", -1.0),
        ("pipeline", "restart_backoff_s", -1.0),
        ("pipeline", "max_restarts", -1),
        ("capture", "reconnect_backoff_s", -1.0),
        ("bus", "eos_repeat_s", 0.0),
    ],
)
def test_check_config_refuses_each_value_that_would_hang_or_crash_loop_a_run_naming_the_key(
    tmp_path: Path, section: str, key: str, value: float
) -> None:
    path = write(tmp_path, f"[{section}]\n{key} = {value!r}\n")
    with pytest.raises(ConfigError, match=rf"'{section}\.{key}' has an invalid value {value!r}"):
        config.load(path)
    proc = check_config(path)
    assert proc.returncode == 2 and f"'{section}.{key}' has an invalid value" in proc.stderr


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """``emopipe check-config PATH`` as its own process."""
    return subprocess.run(
        [sys.executable, "-m", "deploy.launcher", "check-config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_config_that_is_not_utf8_or_is_a_folder_is_one_line_naming_it(tmp_path: Path) -> None:
    latin = tmp_path / "latin1.toml"
    latin.write_bytes('[sink]\nevents = "caf\xe9.jsonl"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml is not UTF-8 text"):
        config.load(latin)
    with pytest.raises(ConfigError, match=rf"config file {tmp_path} is a folder"):
        config.load(tmp_path)
    for path in (latin, tmp_path):
        proc = check_config(path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_a_bad_environment_override_is_named_as_the_variable_not_as_a_key_of_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[detect]\nmin_neighbors = 3\n")
    with pytest.raises(ConfigError) as err:
        config.load(path, environ={"EMOPIPE__DETECT__MIN_NEIGHBOURS": "7"})
    assert "environment variable EMOPIPE__DETECT__MIN_NEIGHBOURS: unknown key 'detect.min_neighbours'" in str(err.value)
    assert str(path) not in str(err.value)


def test_a_source_with_a_newline_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"'sources\[0\]\.uri' 'a\\nb\.mp4' holds a control character"):
        config.from_dict({"sources": [{"id": "cam0", "uri": "a\nb.mp4"}]})


def test_the_every_key_config_has_every_section() -> None:
    data = tomllib.loads((REPO / "deploy" / "emopipe.toml").read_text())
    assert set(data) >= {f.name for f in dataclasses.fields(Config) if f.name != "sources"}
