"""The act conformance cases (``shared/conformance/act``), each run through the sandbox.

Every case must end as its manifest says (``tests.runner.conformance.check_case``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.runner.conformance import (
    ACT,
    CASES,
    REPO_ROOT,
    case_name,
    case_options,
    case_workflows,
    check_case,
)
from tests.runner.engine import run


@pytest.mark.skipif(not CASES, reason="no act conformance manifest in the shared folder")
@pytest.mark.parametrize("case", CASES, ids=[case_name(c) for c in CASES])
async def test_act_case(case: dict[str, Any]) -> None:
    runs = [
        await run(workflow, repo_root=REPO_ROOT, **case_options(case))
        for workflow in case_workflows(case)
    ]
    check_case(case, runs, "sandbox")


def test_every_case_has_its_files() -> None:
    for case in CASES:
        assert (ACT / case["workflows"]).is_dir() or Path(ACT / case["workflows"]).is_file()
