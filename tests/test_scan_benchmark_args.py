"""benchmarks/scan.py's --candidate parser: config keys and values as choose_config takes them."""

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from scan import parse_config  # noqa: E402


def test_candidate_config_parses_ints_bools_and_none():
    assert parse_config("walk_refine=4, walk=true,walk_BD=None") == dict(walk_refine=4, walk=True, walk_BD=None)


@pytest.mark.parametrize("text", ["walk_refine", "=4", "walk_refine=four"])
def test_candidate_config_rejects_what_is_not_key_equals_value(text):
    with pytest.raises((argparse.ArgumentTypeError, ValueError)):
        parse_config(text)
