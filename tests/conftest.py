"""Shared fixtures: the family table's tiny presets (all offline)."""

import pytest

from helpers import TINY_CASES, case_id


@pytest.fixture(params=TINY_CASES, ids=case_id)
def case(request):
    return request.param
