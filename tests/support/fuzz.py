"""The schemathesis driver of the fuzz suites: every operation of a live app's OpenAPI
schema, called with generated inputs, every failure collected (not only the first).

Operations run one by one inside the calling test (``schema.parametrize``'s lazy fixture
loader does not work with pytest 9). Shrinking is off and examples are few and
derandomized, so a suite runs in well under a minute and the same way each time.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode


def fuzz_operations(
    base_url: str, mode: GenerationMode, checks: list, *, examples: int, **call: Any
) -> tuple[list[str], list[str]]:
    """Run ``examples`` generated cases of ``mode`` per operation of
    ``<base_url>/openapi.json``, each validated by ``checks``; ``call`` goes to
    ``Case.call_and_validate`` (``headers=``, ``timeout=``). Returns (operation labels,
    failures)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    labels, failures = [], []
    for result in schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            kwargs = call
            if "headers" in call and _drops_required_header(case, "authorization"):
                # The negative case is "no credentials": honour it rather than adding ours
                # (which made the server accept a case the checker counts as invalid).
                headers = {k: v for k, v in call["headers"].items() if k.lower() != "authorization"}
                kwargs = {**call, "headers": headers}
            case.call_and_validate(checks=checks, **kwargs)

        try:
            run()
        except Unsatisfiable:
            pass  # no invalid input exists for an operation without parameters
        except BaseException as exc:  # noqa: BLE001 - FailureGroup is a BaseExceptionGroup
            failures.append(f"{operation.label} [{mode.value}]: {exc}".strip()[:3000])
    return labels, failures


def _drops_required_header(case: schemathesis.Case, name: str) -> bool:
    """Whether ``case``'s negative mutations removed the required header ``name`` (the
    security scheme's ``Authorization``)."""
    data = getattr(getattr(case.meta, "phase", None), "data", None)
    for mutation in getattr(data, "mutations", None) or ():
        if getattr(mutation.parameter_location, "value", None) != "header":
            continue
        named = (mutation.parameter, mutation.original_value, mutation.new_value)
        if "required" in mutation.keywords and any(name in str(v).lower() for v in named):
            return True
    return False
