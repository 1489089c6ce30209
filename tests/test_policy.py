"""Policies: the shipped ones load, every invalid field is named with its value, the env precedence holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from resilient_moe import events
from resilient_moe.policy import (
    POLICY_ENV,
    Policy,
    PolicyError,
    _policy_from,
    active_policy,
    default_policy_path,
    environment_policy,
    load_policy,
)

SHIPPED = sorted((Path(__file__).parent.parent / "policies").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_policies_load(path: Path) -> None:
    assert isinstance(load_policy(path), Policy)


def test_default_file_is_the_packaged_one_and_matches_the_model_defaults() -> None:
    assert default_policy_path().read_text() == (Path(__file__).parent.parent / "policies" / "default.yaml").read_text()
    assert load_policy(default_policy_path()) == Policy()


@pytest.mark.parametrize(
    ("yaml_text", "names"),
    [
        ("version: 2", ["version", "2"]),
        ("version: 1\nladder: {order: [block_x]}", ["ladder.order.0", "block_x"]),
        ("version: 1\nladder: {order: [block_n, block_n]}", ["ladder.order", "repeats"]),
        ("version: 1\nladder: {order: []}", ["ladder.order"]),
        ("version: 1\nladder: {min_block_n: 24}", ["ladder.min_block_n", "24", "power of two"]),
        ("version: 1\nladder: {min_block_m: 0}", ["ladder.min_block_m", "0"]),
        ("version: 1\nladder: {factor: 1}", ["ladder.factor", "1"]),
        ("version: 1\nladder: {max_attempts: 0}", ["ladder.max_attempts", "0"]),
        ("version: 1\nladder: {min_num_stages: 0}", ["ladder.min_num_stages", "0"]),
        ("version: 1\nladder: {compare: 9}", ["ladder.compare", "9"]),
        ("version: 1\nladder: {trim_block_m: maybe}", ["ladder.trim_block_m", "maybe"]),
        ("version: 1\nladder: {compare_forms: maybe}", ["ladder.compare_forms", "maybe"]),
        ("version: 1\nladder: {max_atempts: 3}", ["ladder.max_atempts", "Extra inputs"]),
        ("version: 1\non_exhausted: retry", ["on_exhausted", "retry"]),
        ("version: 1\ntriggers: {registers: [block_n]}", ["triggers.registers"]),
        ("version: 1\narch: {gfx951: {}}", ["gfx951", "unknown chip"]),
        ("version: 1\narch: {gfx950: {default: {block_n: 300}}}", ["arch.gfx950.default.block_n", "300"]),
        ("version: 1\narch: {gfx950: {pin: {num_stages: 0}}}", ["arch.gfx950.pin.num_stages", "0"]),
        ("version: 1\narch: {gfx950: {default: {blockn: 64}}}", ["arch.gfx950.default.blockn"]),
        ("- a list", ["a mapping"]),
        ("version: [1", ["not valid YAML"]),
    ],
)
def test_invalid_fields_are_named_with_file_and_value(tmp_path: Path, yaml_text: str, names: list[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    message = str(err.value)
    assert str(path) in message
    for name in names:
        assert name in message


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "absent.yaml")


def test_precedence_argument_then_env_then_default(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "env.yaml"
    path.write_text("version: 1\non_exhausted: reference\n")
    explicit = Policy(ladder={"max_attempts": 3})
    monkeypatch.setenv(POLICY_ENV, str(path))
    environment_policy.cache_clear()
    assert active_policy(explicit) is explicit
    assert active_policy().on_exhausted == "reference"
    monkeypatch.delenv(POLICY_ENV)
    environment_policy.cache_clear()
    assert active_policy() == Policy()


def test_broken_env_policy_falls_back_to_default_with_an_error_event(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("version: 1\nladder: {factor: 3}\n")
    monkeypatch.setenv(POLICY_ENV, str(path))
    _policy_from.cache_clear()
    environment_policy.cache_clear()
    with events.capture() as logs:
        assert active_policy() == Policy()
    assert logs[0]["event"] == "policy.invalid" and "ladder.factor" in logs[0]["error"]
    _policy_from.cache_clear()
    environment_policy.cache_clear()
