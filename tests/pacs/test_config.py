"""PACS settings: YAML, options over YAML, and one-line errors for unknown keys and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from spinelab.errors import ConfigError
from spinelab.pacs.config import load_pacs_config


def test_yaml_then_options(tmp_path: Path) -> None:
    path = tmp_path / "pacs.yaml"
    path.write_text("ae_title: NODE1\nport: 4000\nmodel: [runs/a]\nremote: {ae_title: PACS, host: pacs, port: 104}\n")
    cfg = load_pacs_config(path, port=5000, remote_port=11113, host=None)
    assert (cfg.ae_title, cfg.port, cfg.host) == ("NODE1", 5000, "127.0.0.1")
    assert cfg.model == [Path("runs/a")]
    assert (cfg.remote.ae_title, cfg.remote.host, cfg.remote.port) == ("PACS", "pacs", 11113)


def test_no_remote_unless_given() -> None:
    assert load_pacs_config().remote is None
    assert load_pacs_config(remote_ae_title="PACS", remote_port=4242).remote.port == 4242


@pytest.mark.parametrize(("text", "match"), [
    ("aetitle: X\n", "aetitle: Extra inputs are not permitted"),
    ("ae_title: THIS_TITLE_IS_TOO_LONG\n", "ae_title: .*1-16 ASCII characters"),
    ("quiet_seconds: 0\n", "quiet_seconds"),
    ("- a\n- b\n", "a mapping of settings"),
])
def test_bad_settings_are_one_config_error_naming_the_file(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "pacs.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        load_pacs_config(path)
    assert str(path) in str(err.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the PACS config"):
        load_pacs_config(tmp_path / "absent.yaml")
