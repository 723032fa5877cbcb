import pytest
import torch

from core.device import _DEFAULT_THREADS, free_cpu_threads, resolve_device, use_cpu_threads


@pytest.mark.parametrize(("cores", "load", "want"), [(2, 0.0, 2), (2, 0.4, 2), (2, 1.0, 1), (2, 1.6, 1), (2, 7.5, 1)])
def test_free_threads_leave_the_busy_cores(cores: int, load: float, want: int) -> None:
    assert free_cpu_threads(cores, load) == min(want, _DEFAULT_THREADS)


def test_free_threads_stop_at_the_physical_cores() -> None:
    assert free_cpu_threads(10_000, 0.0) == _DEFAULT_THREADS


def test_use_cpu_threads_sets_torch_and_refuses_zero() -> None:
    before = torch.get_num_threads()
    try:
        assert use_cpu_threads(1) == 1
        assert torch.get_num_threads() == 1
        assert 1 <= use_cpu_threads(None) <= _DEFAULT_THREADS
        with pytest.raises(ValueError, match="at least 1"):
            use_cpu_threads(0)
    finally:
        torch.set_num_threads(before)


def test_resolve_device_names() -> None:
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
