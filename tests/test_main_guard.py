"""A script without the ``if __name__ == "__main__":`` guard gets an error that names the guard, at once.

Both scripts are started together (a module fixture), so that each one's start-up (torch, the worker process) runs
while the other's does: the suite itself runs in one process and leaves the second core free.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPTS = {
    "no_guard": """
        from sb3_nigt import RennalaNIGT
        model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, round_size=2, horizon=5,
                            backend="subprocess", n_workers=1, seed=0)
        model.learn(20)
        print("trained")
    """,
    "guard": """
        from sb3_nigt import RennalaNIGT
        if __name__ == "__main__":
            model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, round_size=2, horizon=5,
                                backend="subprocess", n_workers=1, seed=0)
            model.learn(20)
            print("trained")
    """,
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """``finished(name)``: the ``subprocess.CompletedProcess`` of the script ``name``; all scripts start at once."""
    folder = tmp_path_factory.mktemp("main_guard")
    running = {}
    for name, text in SCRIPTS.items():
        script = folder / f"{name}.py"
        script.write_text(textwrap.dedent(text))
        running[name] = subprocess.Popen([sys.executable, str(script)], cwd=folder, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)
    done: dict = {}

    def wait(name):
        if name not in done:
            stdout, stderr = running[name].communicate(timeout=120)
            done[name] = subprocess.CompletedProcess(running[name].args, running[name].returncode, stdout, stderr)
        return done[name]

    yield wait
    for process in running.values():
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_missing_main_guard_names_the_guard(finished):
    done = finished("no_guard")
    assert done.returncode != 0
    assert "trained" not in done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError:") and 'if __name__ == "__main__":' in last, done.stderr[-2000:]
    assert "WorkerError" not in done.stderr  # refused at the first loss, not after max_failures restarts


def test_guarded_script_trains(finished):
    done = finished("guard")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trained" in done.stdout
