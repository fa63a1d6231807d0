"""``trainer.precision=auto``: which policy each kind of machine gets, measured once per machine."""

import json

import pytest

from recipes.config import ConfigError
from recipes.engine import precision


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A CPU-only machine whose flags and bfloat16 speed-up the test sets; counts the measurements."""
    state = {"flags": set(), "speedup": 1.0, "measured": 0}

    def speedup():
        state["measured"] += 1
        return state["speedup"]

    monkeypatch.delenv(precision.PIN, raising=False)
    monkeypatch.setattr(precision, "CACHE", tmp_path / "cache" / "precision.json")
    monkeypatch.setattr(precision, "_MEASURED", {})
    monkeypatch.setattr(precision, "cpu_identity", lambda: ("Test CPU 9000", state["flags"]))
    monkeypatch.setattr(precision, "bf16_speedup", speedup)
    monkeypatch.setattr(precision.tf.config, "list_physical_devices", lambda kind=None: [])
    return state


@pytest.mark.parametrize("name", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_an_explicit_policy_is_kept(machine, name):
    assert precision.resolve_precision(name)[0] == name
    assert machine["measured"] == 0


def test_a_cpu_without_bf16_units_trains_in_float32_without_measuring(machine):
    machine["flags"] = {"avx2", "avx512f"}
    policy, why = precision.resolve_precision("auto")
    assert policy == "float32" and "no bfloat16 units" in why and machine["measured"] == 0


@pytest.mark.parametrize(
    ("speedup", "policy"),
    [(2.0, "mixed_bfloat16"), (1.15, "mixed_bfloat16"), (1.1, "float32"), (0.13, "float32")],
)
def test_a_cpu_with_bf16_units_takes_bf16_only_where_it_measures_faster(machine, speedup, policy):
    machine["flags"] = {"avx512f", "avx512_bf16"}
    machine["speedup"] = speedup
    assert precision.resolve_precision("auto")[0] == policy


def test_the_measurement_is_made_once_per_machine_and_kept(machine):
    machine["flags"] = {"amx_bf16"}
    machine["speedup"] = 1.8
    first = precision.resolve_precision("auto")
    assert precision.resolve_precision("auto") == first and machine["measured"] == 1
    cached = json.loads(precision.CACHE.read_text())
    assert list(cached.values()) == [1.8] and "Test CPU 9000" in next(iter(cached))
    precision._MEASURED.clear()  # a new process on the same machine reads the file
    assert precision.resolve_precision("auto") == first and machine["measured"] == 1


@pytest.mark.parametrize("content", ["{torn", "[1, 2]", '{"Test CPU 9000 | x": "fast"}', ""])
def test_a_damaged_cache_is_measured_again(machine, content):
    machine["flags"] = {"avx512_bf16"}
    machine["speedup"] = 1.5
    precision.CACHE.parent.mkdir(parents=True)
    precision.CACHE.write_text(content)
    assert precision.resolve_precision("auto")[0] == "mixed_bfloat16" and machine["measured"] == 1


def test_the_environment_pins_the_cpu_choice(machine, monkeypatch):
    machine["flags"] = {"avx512_bf16"}
    machine["speedup"] = 3.0
    monkeypatch.setenv(precision.PIN, "float32")
    assert precision.resolve_precision("auto")[0] == "float32" and machine["measured"] == 0
    for bad in ("bf16", "float16", "mixed_float16"):
        monkeypatch.setenv(precision.PIN, bad)
        with pytest.raises(ConfigError, match=precision.PIN):
            precision.resolve_precision("auto")


def test_a_gpu_gets_float16_with_tensor_cores_and_float32_without(machine, monkeypatch):
    gpu = object()
    monkeypatch.setattr(precision.tf.config, "list_physical_devices", lambda kind=None: [gpu])
    for capability, policy in (((9, 0), "mixed_float16"), ((7, 0), "mixed_float16"), ((6, 1), "float32")):
        monkeypatch.setattr(
            precision.tf.config.experimental,
            "get_device_details",
            lambda device, c=capability: {"compute_capability": c},
        )
        assert precision.resolve_precision("auto")[0] == policy


def test_bf16_speedup_measures_a_positive_ratio():
    assert precision.bf16_speedup(seconds=0.03) > 0
