"""The harness itself: each outcome is told apart."""
from __future__ import annotations

from conftest import Result, classify, run_cli

from audiopg.core.errors import ConfigError


def test_a_known_clear_case(faults, tmp_path):
    faults.cli(["pretrain", "--preset", "tiny", "--steps", "1", "--out", tmp_path / "r", "--set", "nonsense=1"],
               "nonsense")
    faults.api(lambda: (_ for _ in ()).throw(ConfigError("world.seconds", "must be > 0")), "world.seconds")


def test_outcomes_are_told_apart():
    ok, fail = Result(0, "", ""), Result(2, "", "audiopg x: error: a.wav: empty")
    tb = Result(1, "", "Traceback (most recent call last):\n  ...\nOSError: a.wav")
    assert classify(fail, "a.wav", {}, {}, expect="clear") == "clear"
    assert classify(fail, "b.wav", {}, {}, expect="clear") == "unclear"
    assert classify(ok, "a.wav", {}, {}, expect="clear") == "silent"
    assert classify(Result(0, "", "warning: a.wav is short"), "a.wav", {}, {}, expect="warned") == "warned"
    assert classify(tb, "a.wav", {}, {}, expect="clear") == "traceback"
    assert classify(fail, "a.wav", {"f": ("x", 0o644)}, {"f": ("y", 0o644)}, expect="clear") == "data lost"
    assert classify(fail, "a.wav", {"f": ("x", 0o644)}, {}, expect="clear") == "data lost"


def test_in_process_run_catches_escaping_exceptions():
    res = run_cli(["--version"])
    assert res.rc == 0 and "audiopg" in res.stdout
