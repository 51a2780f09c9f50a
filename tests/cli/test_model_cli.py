from __future__ import annotations

import argparse
import json

import pytest

from unihema.cli import model as model_cli
from unihema.model.configuration import MODULE_GROUPS, ConfigError, UniHemaConfig


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="unihema")
    model_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_info_tiny_json(capsys) -> None:
    assert run(["model", "info", "--preset", "tiny", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["groups"]) == list(MODULE_GROUPS)
    assert report["total"] == sum(report["groups"].values()) == report["vision"] + report["text"]
    assert report["text"] == report["groups"]["E_T"] + report["groups"]["D_T"]
    # Random initialisation trains every backbone stage (only pretrained weights freeze the stem).
    assert report["trainable"]["B"] == report["groups"]["B"]
    assert "upstream" not in report


def test_info_paper_compares_with_upstream(capsys) -> None:
    assert run(["model", "info", "--preset", "paper"]) == 0
    text = capsys.readouterr().out
    for group in MODULE_GROUPS:
        assert f"\n{group} " in text
    assert "247.6M here vs 247.6M upstream (+0)" in text
    assert "vs 54.5M upstream" in text


def test_info_from_config_file(tmp_path, capsys) -> None:
    config = UniHemaConfig.from_preset("tiny", vision={"num_queries": 50})
    path = config.save(tmp_path / "model.yaml")
    assert run(["model", "info", "--config", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    tiny = model_cli.parameter_report(UniHemaConfig.from_preset("tiny"))
    # 250 fewer learned content queries of width 128.
    assert tiny["groups"]["D_I"] - report["groups"]["D_I"] == 250 * 128
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"vision": {"d_model": 130}}))
    with pytest.raises(ConfigError, match="vision.d_model"):
        run(["model", "info", "--config", str(bad)])
