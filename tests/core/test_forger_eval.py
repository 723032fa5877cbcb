import pytest
import torch
from torch import nn

from core.forger_eval import measure_forger
from core.forgers import CELEBA5, Forger


class Shift(nn.Module):
    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return x + 0.1


def test_exact_numbers_on_a_shifting_forger() -> None:
    forger = Forger("shift", Shift(), {"image_size": 8}, CELEBA5)
    faces = torch.zeros(3, 3, 8, 8)
    attrs = torch.tensor([[1.0, 0, 0, 1, 1], [0, 1, 0, 0, 0], [0, 0, 0, 1, 0]])
    always_yes = lambda x: torch.ones(x.shape[0], 5)  # noqa: E731
    out = measure_forger(forger, faces, attrs, always_yes, batch=2)
    assert out["faces"] == 3
    assert out["edit_strength"] == pytest.approx(0.01)
    assert out["reconstruction_mse"] == pytest.approx(0.04)
    assert out["identity_mse"] == pytest.approx(0.01)
    # Hair targets always ask for 1 (all hits); Male targets are 0,1,0 and Young targets 0,1,1.
    assert out["target_accuracy_per_target"] == {"Black_Hair": 1.0, "Blond_Hair": 1.0, "Brown_Hair": 1.0,
                                                 "Male": pytest.approx(1 / 3, abs=1e-4),
                                                 "Young": pytest.approx(2 / 3, abs=1e-4)}
    assert "target_accuracy" not in measure_forger(forger, faces, attrs, None)
