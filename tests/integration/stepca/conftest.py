"""Session fixtures for the step-ca tests: the binaries (built once, cached by build.sh) and one
running CA with two provisioners, stopped at the end of the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import stepca
from tests.support.stepca import StepCa, StepCaBinaries, StepCaUnavailable


@pytest.fixture(scope="session")
def stepca_binaries() -> StepCaBinaries:
    try:
        return stepca.build_binaries()
    except StepCaUnavailable as exc:
        pytest.skip(f"step-ca cannot be built here: {exc}")


@pytest.fixture(scope="session")
def stepca_server(
    stepca_binaries: StepCaBinaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StepCa]:
    ca = stepca.init_ca(stepca_binaries, tmp_path_factory.mktemp("stepca"))
    stepca.start(ca, stepca_binaries)
    try:
        yield ca
    finally:
        stepca.stop(ca)
