"""The ACL rules the docs list are the ones the TLS/ACL test grants (rayr.testing_redis.acl_rules)."""

from __future__ import annotations

import re
from pathlib import Path

from rayr.testing_redis import acl_rules

PAGE = Path(__file__).resolve().parents[2] / "docs" / "clusters" / "existing-redis.md"


def test_the_documented_rules_are_the_tested_ones():
    block = re.search(r"```\nACL SETUSER rayr on >PASSWORD (.*?)```", PAGE.read_text(), re.S)
    assert block, "the ACL SETUSER block is gone from the page"
    assert block.group(1).split() == acl_rules("default")
