"""WorkerLoop, the event loop shared by subprocess workers and Ray actors, with a fake worker and channel."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Optional

import numpy as np
import pytest

from sb3_nigt.workers.loop import WorkerLoop
from sb3_nigt.workers.messages import ComputeUnit, Theta, UnitDone


class FakeWorker:
    def __init__(self, error: Optional[BaseException] = None):
        self.error = error
        self.params: list[np.ndarray] = []

    def set_params(self, params: np.ndarray, obs_norm: Any) -> None:
        self.params.append(params)

    def run_unit(self, unit: Any, cancelled: Any) -> str:
        if self.error is not None:
            raise self.error
        return f"sum of unit {unit.agent}"


def make_loop(worker: FakeWorker, commands: list[Any]) -> tuple[WorkerLoop, list[Any]]:
    sent: list[Any] = []

    def receive(timeout: Optional[float]) -> Any:
        if not commands:
            raise EOFError  # the main process closed the channel
        return commands.pop(0)

    loop = WorkerLoop(worker, sent.append, receive, lambda: 0,  # type: ignore[arg-type]
                      lambda slot, handle: np.full(3, slot + 10, dtype=np.float32), heartbeat=None)
    return loop, sent


def unit(agent: int) -> ComputeUnit:
    return ComputeUnit(SimpleNamespace(agent=agent, slot=-1, epoch=0), Theta(1, None, None))  # type: ignore[arg-type]


def test_units_are_answered_in_order_and_a_closed_channel_ends_the_loop():
    worker = FakeWorker()
    loop, sent = make_loop(worker, [unit(0), unit(1)])
    loop.run()
    assert sent == [UnitDone("sum of unit 0"), UnitDone("sum of unit 1")]  # type: ignore[arg-type]
    assert len(worker.params) == 1 and worker.params[0].tolist() == [9.0, 9.0, 9.0]  # θ fetched once per version


def test_an_eof_error_of_the_work_itself_propagates():
    # Only the channel's EOFError means "closed"; one raised by the user's environment is an error to report.
    loop, sent = make_loop(FakeWorker(EOFError("the env read stdin")), [unit(0)])
    with pytest.raises(EOFError, match="stdin"):
        loop.run()
    assert sent == []


@pytest.mark.parametrize("command, name", [(("dance",), "dance"), (UnitDone(None), "UnitDone")])  # type: ignore[arg-type]
def test_an_unknown_command_is_refused_naming_it(command, name):
    loop, _ = make_loop(FakeWorker(), [command])
    with pytest.raises(ValueError, match=f"worker: unknown command '{name}'; expected one of"):
        loop.run()
