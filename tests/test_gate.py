"""The flip gate on its own: bounds, and the order in which waiting flips run."""

import os
import threading

import pytest

from harness import wait_for
from service.gate import Busy, ClientGone, FlipGate, OverShare


class Flips:
    """Flips held in a gate by threads, each until released; records the order they ran in."""

    def __init__(self, gate: FlipGate):
        self.gate = gate
        self.ran: list[str] = []
        self.release: dict[str, threading.Event] = {}
        self.threads: list[threading.Thread] = []

    def start(self, name: str, client: str, gone=lambda: False) -> None:
        self.release[name] = threading.Event()
        held = self.gate.held

        def hold() -> None:
            try:
                with self.gate.admit(client, gone):
                    self.ran.append(name)
                    self.release[name].wait(10)
            except ClientGone:
                self.ran.append(f"{name} gone")

        self.threads.append(threading.Thread(target=hold))
        self.threads[-1].start()
        assert wait_for(lambda: self.gate.held == held + 1, timeout=5)

    def finish(self, name: str) -> None:
        """Let the running flip `name` end, and wait until the next one has started."""
        count = len(self.ran)
        self.release[name].set()
        wait_for(lambda: len(self.ran) > count or self.gate.held == 0, timeout=5)

    def finish_all(self) -> None:
        for event in self.release.values():
            event.set()
        for thread in self.threads:
            thread.join(timeout=10)


@pytest.fixture
def flips():
    """Flips through a gate that runs one at a time and holds 8, at most 5 from one client."""
    held = Flips(FlipGate(concurrency=1, queue=8, client_share=5))
    yield held
    held.finish_all()


def test_one_client_flips_run_in_the_order_they_came(flips):
    for name in "abcde":
        flips.start(name, "greedy")
    for name in "abcd":
        flips.finish(name)
    assert flips.ran == list("abcde")


def test_a_client_with_one_flip_runs_beside_the_queue_and_then_takes_turns(flips):
    for name in ("g1", "g2", "g3", "g4"):
        flips.start(name, "greedy")
    flips.start("p1", "polite")  # its only flip here: the express lane, at once
    assert flips.ran == ["g1", "p1"]
    flips.start("p2", "polite")  # a second one waits; the greedy client started longest ago
    flips.finish("g1")
    flips.finish("g2")
    assert flips.ran == ["g1", "p1", "g2", "p2"]


def test_the_express_lane_runs_one_flip_at_a_time(flips):
    flips.start("a1", "a")
    flips.start("b1", "b")  # express
    flips.start("c1", "c")  # the lane is taken: it waits for a turn
    assert flips.ran == ["a1", "b1"]
    flips.finish("b1")
    assert flips.ran == ["a1", "b1"]  # an express flip ending hands no turn on
    flips.finish("a1")
    assert flips.ran == ["a1", "b1", "c1"]


def test_clients_take_turns_least_recently_started_first(flips):
    flips.start("a1", "a")  # runs
    flips.start("x1", "x")  # the express lane, held throughout
    for name in ("a2", "a3", "b1", "b2", "c1"):
        flips.start(name, name[0])
    for name in ("a1", "b1", "c1", "a2", "b2"):
        flips.finish(name)
    assert flips.ran == ["a1", "x1", "b1", "c1", "a2", "b2", "a3"]


def test_the_queue_runs_below_the_express_lane(flips):
    niceness = {}

    def record(name: str) -> None:
        niceness[name] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    gate = flips.gate
    with gate.admit("a") as queued:
        gate.run(queued, record, "queue")
        with gate.admit("b") as express:
            assert express.express and not queued.express
            gate.run(express, record, "express")
    assert niceness["queue"] > niceness["express"] == os.getpriority(os.PRIO_PROCESS, 0)


def test_a_full_gate_refuses_and_a_client_past_its_share_is_refused(flips):
    for index in range(5):
        flips.start(f"g{index}", "greedy")
    with pytest.raises(OverShare):
        with flips.gate.admit("greedy"):
            pass
    for index in range(3):
        flips.start(f"o{index}", f"other{index}")
    assert flips.gate.held == flips.gate.queue
    with pytest.raises(Busy):
        with flips.gate.admit("newcomer"):
            pass
    assert flips.gate.held_by("greedy") == 5


def test_a_waiting_flip_whose_client_left_gives_its_place_up(flips):
    flips.start("running", "a")
    flips.start("express", "x")
    gone = threading.Event()
    flips.start("waiting", "b", gone=gone.is_set)
    flips.start("next", "c")
    gone.set()
    assert wait_for(lambda: "waiting gone" in flips.ran, timeout=5)
    flips.finish("running")
    assert flips.ran == ["running", "express", "waiting gone", "next"]
    assert flips.gate.held_by("b") == 0


def test_every_place_is_given_back(flips):
    for index in range(8):
        flips.start(f"f{index}", f"client{index % 3}")
    flips.finish_all()
    assert flips.gate.held == 0 and flips.gate._clients == {}


def test_an_express_flip_moved_to_the_queue_waits_for_a_turn_and_frees_the_lane(flips):
    gate = flips.gate
    flips.start("a1", "a")  # the queue's running flip
    ran = []

    def too_large_for_the_lane() -> None:
        with gate.admit("b") as turn:
            assert turn.express
            gate.to_queue(turn)
            ran.append(turn.express)

    moved = threading.Thread(target=too_large_for_the_lane)
    moved.start()
    assert wait_for(lambda: gate.held == 2 and gate._express == 0, timeout=5)
    flips.start("c1", "c")  # the lane is free again
    assert flips.ran == ["a1", "c1"] and ran == []
    flips.finish("a1")
    moved.join(timeout=5)
    assert ran == [False]  # it ran in the queue, after the flip ahead of it
