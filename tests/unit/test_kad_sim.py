"""The DHT simulation (bench/dht_sim.py) at 200 nodes: provider lookups with and without churn."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SIM_PATH = Path(__file__).resolve().parents[2] / "bench" / "dht_sim.py"


@pytest.fixture(scope="module")
def sim() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dht_sim", SIM_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["dht_sim"] = module  # dataclasses look the module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_provider_lookups_200_nodes(sim: ModuleType) -> None:
    report = sim.run_simulation(200, 200, seed=7, keys=20, levels=(0.0, 0.3))
    no_churn, churn = report.levels
    assert no_churn.gone_fraction == 0.0 and no_churn.lookups == 200
    assert no_churn.success_rate == 1.0
    assert churn.gone_fraction == 0.3
    assert churn.success_rate >= 0.95
    assert sorted(no_churn.hops)[len(no_churn.hops) // 2] <= 4
    assert report.mean_table_size >= 20


def test_simulation_is_deterministic_and_wire_encoding_changes_nothing(sim: ModuleType) -> None:
    a = sim.run_simulation(40, 30, seed=3, keys=5, levels=(0.1,))
    b = sim.run_simulation(40, 30, seed=3, keys=5, levels=(0.1,), wire=True)
    assert a.bootstrap_rpcs == b.bootstrap_rpcs
    assert a.levels[0].hops == b.levels[0].hops and a.levels[0].msgs == b.levels[0].msgs
    assert a.levels[0].success_rate == 1.0


def test_disjoint_paths(sim: ModuleType) -> None:
    report = sim.run_simulation(80, 40, seed=5, keys=5, levels=(0.3,), disjoint_paths=2)
    assert report.levels[0].success_rate >= 0.95
