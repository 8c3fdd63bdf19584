"""sb3-nigt: asynchronous distributed policy gradients (Rennala NIGT and friends) for Stable-Baselines3.

Implements Tyurin, Spiridonov, Rudenko, "Asynchronous Policy Gradient Aggregation for Efficient Distributed
Reinforcement Learning", ICLR 2026 (arXiv 2509.24305).
"""

from sb3_nigt.algorithms.afedpg import AFedPG
from sb3_nigt.algorithms.malenia import MaleniaNIGT
from sb3_nigt.algorithms.rennala import RennalaNIGT
from sb3_nigt.algorithms.synchronized import SynchronizedNIGT
from sb3_nigt.clock.calibration import TraceTimes
from sb3_nigt.clock.timing import RandomTimes, TimingModel
from sb3_nigt.policies import MlpPolicy, NIGTPolicy

__version__ = "0.1.0"

__all__ = ["AFedPG", "MaleniaNIGT", "MlpPolicy", "NIGTPolicy", "RandomTimes", "RennalaNIGT", "SynchronizedNIGT", "TimingModel", "TraceTimes", "__version__"]
