import pytest
import torch
from cases import ALL_CASES

# The test models are tiny: one thread avoids spin-waiting on a shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(params=ALL_CASES, ids=[c.__name__ for c in ALL_CASES])
def case(request):
    return request.param()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
