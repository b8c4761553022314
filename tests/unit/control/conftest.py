import pytest

from appliance.control.client import ControlClient

from .serving import ServerThread, seed_vol0


@pytest.fixture
def served(tmp_path):
    srv = ServerThread(tmp_path / "root").start()
    yield srv
    srv.stop()


@pytest.fixture
def client(served):
    with ControlClient(served.path, timeout=30) as c:
        yield c


@pytest.fixture
def vol0(served, tmp_path):
    """A 4 MiB volume 'vol0' with a few writes and a bookmark 'first'."""
    return seed_vol0(served.manager, tmp_path)
