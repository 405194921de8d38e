"""Property-based API testing: schemathesis generates requests from the app's own /openapi.json.

Against a real server process with a valid key: at least 500 generated requests (positive and
negative cases, a fixed seed so CI runs are reproducible), and not one 5xx answer. A 5xx here
means some input reached code that did not expect it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis (dev extra)")
import app_support as support  # noqa: E402
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

KEY_A = support.KEY_A
SEED = 20260407
EXAMPLES_PER_OPERATION_AND_MODE = 60  # x 8 operations x 2 modes: ~700 requests in all


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> Iterator[Any]:
    bundle = support.tiny_bundle(tmp_path_factory.getbasetemp(), assets)
    tmp = tmp_path_factory.mktemp("schemathesis")
    with support.running_server(bundle, tmp, AVASERVE_API_KEYS=KEY_A) as s:
        yield s


@pytest.mark.slow
def test_no_server_errors(server: Any) -> None:
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    headers = {"Authorization": f"Bearer {KEY_A}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8, [op.label for op in operations]

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @seed(SEED)
            @settings(
                max_examples=EXAMPLES_PER_OPERATION_AND_MODE,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                response = case.call(base_url=server.url, headers=headers, timeout=30)
                statuses[response.status_code] += 1
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code}"
                    )

            try:
                run()
            except Unsatisfiable:
                # Negative cases need a parameter to break: /healthz has none.
                assert mode == GenerationMode.NEGATIVE

    total = sum(statuses.values())
    print(f"schemathesis: {total} requests, statuses {dict(sorted(statuses.items()))}")
    assert total >= 500
    assert not failures, failures[:10]
