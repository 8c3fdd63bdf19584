"""A learn call whose workers cannot start writes no TensorBoard run (the logger is made after the workers)."""

from __future__ import annotations

import os

import pytest

from sb3_nigt import RennalaNIGT
from sb3_nigt.clock.rounds import Collector


def test_a_failed_worker_start_leaves_no_tensorboard_run(tmp_path, monkeypatch):
    def refuse(self):
        raise RuntimeError("workers could not start")

    model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, round_size=2, horizon=5, seed=0, tensorboard_log=str(tmp_path))
    monkeypatch.setattr(Collector, "start", refuse)
    with pytest.raises(RuntimeError, match="could not start"):
        model.learn(100)
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    model.learn(100)  # the next call starts fresh and logs
    assert os.listdir(tmp_path) == ["RennalaNIGT_1"]
