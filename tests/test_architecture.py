"""docs/architecture.md stays true: every module it names exists, the layering it states holds, and its two
recipes work (a new aggregation rule trains with the same bits on every backend; the threads backend passes the
contract suite, where tests/test_backend_contract.py runs it as ``"threads"``)."""

from __future__ import annotations

import importlib
import inspect
import re

import numpy as np
import pytest
from test_import_graph import import_graph

from sb3_nigt.backends.registry import BACKENDS

from architecture_recipes import PAGE, load_recipe, recipe

pytestmark = pytest.mark.timeout(300)

#: The settings of the rule's runs: compute times 1, 2, 3, 4 s and K = 2, so agents 0 and 1 count in every round.
RULE_RUN = dict(n_agents=4, round_size=2, compute_times=[1, 2, 3, 4], horizon=10, policy_kwargs=dict(net_arch=[8]), seed=3)
STEPS = 200  # 10 rounds of 2 trajectories of 10 steps


def train_rule(backend: str, **extra) -> tuple[bytes, object, list[int], int]:
    """θ's bytes, the exact simulated time, the last round's M_i and the number of rounds of the recipe's algorithm."""
    algorithm = load_recipe("aggregation rule").FastestAgentsNIGT
    model = algorithm("MlpPolicy", "Pendulum-v1", backend=backend, **RULE_RUN, **extra)
    model.learn(STEPS)
    return model.get_flat_params().tobytes(), model.simulated_time_exact, model.last_counts.tolist(), model.n_rounds


@pytest.fixture(scope="module")
def inline_run() -> tuple[bytes, object, list[int], int]:
    return train_rule("inline")


# ---------------------------------------------------------------------------------------------------- the page
def test_every_module_the_page_names_exists():
    root = PAGE.parent.parent
    text = PAGE.read_text(encoding="utf-8")
    paths = set(re.findall(r"`(sb3_nigt/[\w/.]*)`", text))
    assert len(paths) > 25, "the table of concepts lost its module paths"
    paths |= {"sb3_nigt/" + path for path in re.findall(r"\b((?:core|clock|workers|backends|algorithms)/\w+\.py)", text)}
    missing = sorted(path for path in paths if not (root / path).exists())
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"


def test_the_layers_import_only_what_the_page_allows():
    apps = {"train", "compare", "timeline", "zoo", "experiments"}
    allowed = {  # layer -> the layers (or module prefixes) it may import, as in the page's "Layering" table
        "core": {"core"},
        "workers": {"core", "workers", "policies"},
        "policies": {"sb3_nigt.algorithms.warn"},
        "backends": {"core", "workers", "backends"},
        "clock": {"core", "workers", "clock", "sb3_nigt.backends.contract", "sb3_nigt.backends.registry"},
    }
    exceptions = {("sb3_nigt.backends.torch_distributed", "sb3_nigt.clock.real")}
    wrong = []
    for module, targets in import_graph().items():
        layer = module.split(".")[1] if "." in module else ""
        for target in targets:
            target_layer = target.split(".")[1] if "." in target else ""
            if layer in allowed:
                ok = target_layer in allowed[layer] or any(target.startswith(p) for p in allowed[layer] if "." in p)
            else:
                ok = layer not in ("algorithms",) or target_layer not in apps
            if not ok and (module, target) not in exceptions:
                wrong.append(f"{module} -> {target}")
    assert not wrong, f"imports that break the layering of docs/architecture.md: {wrong}"


# ---------------------------------------------------------------------------------------- recipe: a rule
def test_the_rule_recipe_is_under_40_lines():
    assert len(recipe("aggregation rule").splitlines()) < 40


def test_the_rule_takes_one_gradient_from_each_of_the_k_fastest_agents():
    rule = load_recipe("aggregation rule").FastestAgents(4, 2)
    rule.add(2)
    assert not rule.wants_more(2) and not rule.done()
    rule.add(0)
    assert rule.done()
    sums = {0: np.array([1.0, 2.0]), 2: np.array([3.0, 6.0])}
    assert rule.aggregate(sums).tolist() == [2.0, 4.0]
    assert rule.aggregate(np.array([[1.0, 2.0], [9.0, 9.0], [3.0, 6.0], [9.0, 9.0]])).tolist() == [2.0, 4.0]


def test_the_rule_trains_inline_on_the_simulated_clock(inline_run):
    _, time, counts, rounds = inline_run
    assert counts == [1, 1, 0, 0]  # the two fastest agents, one gradient each
    assert rounds >= 2 and time == 2 * rounds  # each round waits for agent 1 (2 s), never for agents 2 and 3


@pytest.mark.parametrize("backend", ["subprocess", "threads"])
def test_the_rule_gives_the_same_bits_on_every_backend(inline_run, backend):
    load_recipe("threads backend")  # registers "threads"
    assert train_rule(backend, n_workers=2) == inline_run


def test_the_rule_gives_the_same_bits_on_ray(inline_run, ray_runtime):
    assert train_rule("ray", n_workers=2) == inline_run


@pytest.mark.parametrize("backend", ["inline", "threads"])
def test_the_rule_runs_on_the_real_clock(backend):
    load_recipe("threads backend")
    algorithm = load_recipe("aggregation rule").FastestAgentsNIGT
    model = algorithm("MlpPolicy", "Pendulum-v1", backend=backend, clock="real", **RULE_RUN)
    model.learn(60)
    counts = model.last_counts
    assert counts.sum() == 2 and counts.max() == 1  # K = 2 agents, one gradient each, whichever came first


# -------------------------------------------------------------------------------------- recipe: a backend
def test_the_backend_recipe_registers_threads():
    module = load_recipe("threads backend")
    assert BACKENDS["threads"] is module.ThreadBackend


def test_malenia_on_threads_gives_the_bits_of_inline():
    from sb3_nigt import MaleniaNIGT

    load_recipe("threads backend")
    runs = []
    for backend in ("inline", "threads"):
        model = MaleniaNIGT("MlpPolicy", "Pendulum-v1", n_agents=3, compute_times=[1, 2, 3], horizon=10,
                            policy_kwargs=dict(net_arch=[8]), seed=0, backend=backend, n_workers=2)
        model.learn(STEPS)
        runs.append((model.get_flat_params().tobytes(), model.simulated_time_exact, model.last_counts.tolist()))
    assert runs[0] == runs[1]


def page_classes() -> dict[str, type]:
    """Every class defined in the package's layer folders, by name."""
    classes: dict[str, type] = {}
    for module_name in import_graph():
        if module_name.split(".")[1:2] in (["core"], ["clock"], ["workers"], ["backends"], ["algorithms"]):
            module = importlib.import_module(module_name)
            for name, value in vars(module).items():
                if inspect.isclass(value) and value.__module__ == module_name:
                    classes[name] = value
    return classes


def test_every_class_method_and_function_the_page_names_exists():
    text = PAGE.read_text(encoding="utf-8")
    classes = page_classes()
    named = set(re.findall(r"\b([A-Z]\w+)\.(\w+)\b", text))
    assert len(named) > 30, "the pictures lost their names"
    unknown = sorted(f"{owner}.{attr}" for owner, attr in named
                     if owner not in classes or not hasattr(classes[owner], attr))
    assert not unknown, f"docs/architecture.md names methods that do not exist: {unknown}"
    functions = {"sb3_nigt.clock.planner": ["plan_round", "plan_vectorized", "upload"], "sb3_nigt.clock.real": ["lost_work"],
                 "sb3_nigt.workers.loop": ["serve", "flush_result"], "sb3_nigt.backends.remote": ["bounded"],
                 "sb3_nigt.backends.registry": ["register_backend"]}
    for module_name, names in functions.items():
        module = importlib.import_module(module_name)
        assert all(callable(getattr(module, name, None)) and name in text for name in names), (module_name, names)
