import pytest
import torch
from cases import ALL_CASES

# The test models are tiny: one thread avoids spin-waiting on a shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test, the count before it restored after (a test
    elsewhere, e.g. a benchmark run, may have changed it). These models are tiny: a
    second thread only adds synchronisation, which made the training tests up to 100x
    slower on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
