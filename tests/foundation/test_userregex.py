"""lightmesh.userregex: users' route regexes on RE2, compiled once per distinct pattern."""

import pytest

from lightmesh.userregex import check_user_regex, compile_user_regex


def test_patterns_compile_once_and_invalid_ones_fail_every_time():
    first = compile_user_regex("/api/v[0-9]+/.*")
    hits = compile_user_regex.cache_info().hits
    assert compile_user_regex("/api/v[0-9]+/.*") is first  # a build checks each pattern twice
    assert compile_user_regex.cache_info().hits == hits + 1  # the second time from our cache
    assert first.match("/api/v2/x") and not first.match("/web")
    for _ in range(2):  # an invalid pattern is never cached as valid
        with pytest.raises(ValueError, match="missing \\)"):
            compile_user_regex("/api/(x")
    assert check_user_regex("(a)\\1") is not None  # backreferences: not RE2
    assert check_user_regex("(a+)+$") is None  # linear time in RE2: fine
