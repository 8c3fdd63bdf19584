"""A script without the ``if __name__ == "__main__":`` guard gets an error that names the guard, at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_missing_main_guard_names_the_guard(tmp_path):
    script = tmp_path / "no_guard.py"
    script.write_text(textwrap.dedent("""
        from sb3_nigt import RennalaNIGT
        model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, round_size=2, horizon=5,
                            backend="subprocess", n_workers=1, seed=0)
        model.learn(20)
        print("trained")
    """))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "trained" not in done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError:") and 'if __name__ == "__main__":' in last, done.stderr[-2000:]
    assert "WorkerError" not in done.stderr  # refused at the first loss, not after max_failures restarts


def test_guarded_script_trains(tmp_path):
    script = tmp_path / "guard.py"
    script.write_text(textwrap.dedent("""
        from sb3_nigt import RennalaNIGT
        if __name__ == "__main__":
            model = RennalaNIGT("MlpPolicy", "Pendulum-v1", n_agents=2, round_size=2, horizon=5,
                                backend="subprocess", n_workers=1, seed=0)
            model.learn(20)
            print("trained")
    """))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trained" in done.stdout
