import pytest

from appliance.tcmu import CommandRing

from .sim_kernel import SimKernel


@pytest.fixture
def sim_ring():
    """sim_ring(**sim_kwargs) -> (sim, ring); both closed after the test."""
    made = []

    def _make(*, out_of_order=None, **kw):
        sim = SimKernel(**kw)
        ring = CommandRing(sim.mm, sim.irq, out_of_order=out_of_order)
        made.append((sim, ring))
        return sim, ring

    yield _make
    for sim, ring in made:
        ring.close()
        sim.close()
