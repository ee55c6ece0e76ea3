"""`--dist loadfile` hands out the slowest files first (tests/scheduling.py), whatever their
test counts: xdist alone would start with the files that have the most tests."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests import scheduling

COLLECTION = [
    "tests/test_many.py::test_1",
    "tests/test_many.py::test_2",
    "tests/test_many.py::test_3",
    "tests/test_some.py::test_1",
    "tests/test_some.py::test_2",
    "tests/test_slow.py::test_1",
]


class Node:
    """What the scheduler sees of a worker: it records the tests it is sent."""

    def __init__(self, name: str) -> None:
        self.gateway = SimpleNamespace(id=name)
        self.sent: list[list[str]] = []
        self.shutting_down = False

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent.append([COLLECTION[index] for index in indices])

    def shutdown(self) -> None:
        pass


def test_the_slowest_file_goes_out_first_and_the_rest_as_xdist_orders_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scheduling, "SLOWEST_FILES", ("test_slow.py",))
    config = SimpleNamespace(
        getvalue=lambda name: ["2*popen"], option=SimpleNamespace(loadscopereorder=True)
    )
    scheduler = scheduling.SlowestFirstScheduling(config)
    nodes = [Node("gw0"), Node("gw1")]
    for node in nodes:
        scheduler.add_node(node)
        scheduler.add_node_collection(node, COLLECTION)
    scheduler.schedule()
    first_files = [sent[0][0].split("::")[0] for sent in (nodes[0].sent, nodes[1].sent)]
    assert first_files == ["tests/test_slow.py", "tests/test_many.py"]
    handed_out = [test for node in nodes for sent in node.sent for test in sent]
    assert sorted(handed_out) == sorted(COLLECTION)
