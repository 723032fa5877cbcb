"""The attacker's channel (core.channel) and the protection of faces at the photo's resolution through it."""

from __future__ import annotations

import math

import pytest
import torch

from core.channel import IDENTITY, AttackerChannel, ChannelSpec, Framing, square_mask, texture_mask
from core.faces import Frame, align_crop
from core.forgers import create_forger
from core.image import LoadedImage, quantize
from core.methods import Through, create_method
from core.protect import protect_images
from core.targets import fixed_targets
from tests.photos import astronaut as astronaut_pixels


def window(h: int = 40, w: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 5, 6, generator=g) * 2 - 1
    return quantize(torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False))


FRAME = Frame(24.0, 20.0, 30.0, 0.1)


def test_square_mask_is_one_inside_zero_outside_and_feathered() -> None:
    m = square_mask(Frame(20.0, 20.0, 20.0), 40, 40, feather=0.1)
    assert m.shape == (1, 1, 40, 40)
    assert m[0, 0, 20, 20] == 1.0  # the centre
    assert m[0, 0, 20, 30] == 0.0 and m[0, 0, 5, 20] == 0.0  # pixel centres outside the square (side 20 at 20)
    edge = float(m[0, 0, 20, 29])  # 0.5 px inside the edge, within the 2 px feather band
    assert 0.0 < edge < 0.5
    assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0


def test_identity_channel_is_the_aligned_crop() -> None:
    x = window()
    ch = AttackerChannel(x, FRAME, 16, IDENTITY)
    assert ch.draw(torch.Generator().manual_seed(0)) == {}
    assert torch.equal(ch(x), align_crop(x, FRAME, 16))


def test_confine_leaves_everything_outside_the_square_bit_exact() -> None:
    x = window()
    ch = AttackerChannel(x, FRAME, 16)
    noisy = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    out = ch.confine(noisy)
    outside = ch.mask == 0
    assert outside.any() and (~outside).any()
    assert torch.equal(out.masked_select(outside.expand_as(out)), x.masked_select(outside.expand_as(x)))
    assert not torch.equal(out, x)


def test_pair_shares_one_draw_and_draws_are_seeded() -> None:
    x = window()
    ch = AttackerChannel(x, FRAME, 16, ChannelSpec(p_jpeg=1.0, p_resize=1.0, p_blur=1.0, p_noise=1.0))
    d1 = ch.draw(torch.Generator().manual_seed(5))
    d2 = ch.draw(torch.Generator().manual_seed(5))
    assert d1 == d2 and {"jpeg", "resize", "blur", "noise", "dx", "angle"} <= set(d1)
    # the clean window sent through the pair twice: both sides under the same draw, so identical
    seen, ref = ch.pair(x, x, torch.Generator().manual_seed(3))
    assert seen.shape == (1, 3, 16, 16) and torch.allclose(seen, ref, atol=1e-6)


def test_framing_draws_follow_the_spec() -> None:
    spec = ChannelSpec(framing=Framing(shift=0.02, log_scale=0.03, angle=1.5), clip=2.5)
    ch = AttackerChannel(window(), FRAME, 16, spec)
    g = torch.Generator().manual_seed(0)
    draws = [ch.draw(g) for _ in range(400)]
    dx = torch.tensor([d["dx"] for d in draws])
    angle = torch.tensor([math.degrees(d["angle"]) for d in draws])
    assert 0.015 < float(dx.std()) < 0.025 and float(dx.abs().max()) <= 0.05 + 1e-9
    assert 1.1 < float(angle.std()) < 1.9 and float(angle.abs().max()) <= 3.75 + 1e-6
    assert 0.4 < sum("jpeg" in d for d in draws) / 400 < 0.6  # p_jpeg 0.5


def test_pgd_through_the_channel_raises_its_loss() -> None:
    torch.manual_seed(0)
    forger = create_forger("stargan", config="tiny", pretrained=False)
    x = window(48, 48)
    ch = AttackerChannel(x, Frame(24.0, 24.0, 36.0), 32, IDENTITY)
    protection = create_method("pgd", forger, steps=5)
    through = Through(ch)
    targets = fixed_targets(forger.attributes)[None]
    adv = protection(x, targets=targets, through=through)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        before = protection.loss(x, x, targets, [], g, through)
        after = protection.loss(adv, x, targets, [], g, through)
    assert float(before) == pytest.approx(0.0, abs=1e-9)  # no perturbation: the edits are the clean ones
    assert float(after) > 0


@pytest.fixture(scope="module")
def astronaut() -> LoadedImage:
    from core.image import from_uint8

    return LoadedImage(from_uint8(astronaut_pixels(0.5)), None, "PNG")


def test_faces_protected_at_the_photo_resolution_change_only_their_squares(astronaut: LoadedImage) -> None:
    forger = create_forger("stargan", config="tiny", pretrained=False)
    protection = create_method("pgd", forger, steps=2)
    [result] = protect_images(protection, [astronaut], channel=ChannelSpec(), verify=False)
    assert result.report["protection"] == "faces" and result.report["within_budget"]
    delta = (result.x_adv - astronaut.tensor).abs().amax(dim=1)[0]
    assert result.faces is not None and len(result.faces) == 1
    frame = result.faces[0].frame()
    h, w = delta.shape
    inside = square_mask(frame, h, w)[0, 0] > 0
    assert float(delta[~inside].max()) == 0.0  # bit-exact outside the face's square
    assert float(delta[inside].max()) > 1 / 255
    assert float(delta.max()) <= protection.linf_cap() + 1e-6
    # a perturbation at the photo's resolution, not an upsampled forger-size one: neighbours differ
    centre = delta[int(frame.cy) - 20 : int(frame.cy) + 20, int(frame.cx) - 20 : int(frame.cx) + 20]
    assert float(centre.mean()) > 0


def test_texture_mask_gives_flat_regions_the_floor_and_texture_the_full_budget() -> None:
    flat = torch.zeros(1, 3, 20, 40)
    checker = ((torch.arange(20)[:, None] + torch.arange(40)[None, :]) % 2).float()[None, None].expand(1, 3, -1, -1)
    x = torch.cat([flat[..., :20], checker[..., 20:] * 0.5], dim=-1)  # left flat grey, right a fine checkerboard
    m = texture_mask(x, floor=0.3)
    assert m.shape == (1, 1, 20, 40)
    assert torch.allclose(m[..., :, :10], torch.full_like(m[..., :, :10], 0.3))
    assert torch.allclose(m[..., :, 30:], torch.ones_like(m[..., :, 30:]))
    assert torch.equal(texture_mask(x, floor=1.0), torch.ones_like(m))  # 1: a uniform budget
    ch = AttackerChannel(x, Frame(20.0, 10.0, 18.0), 16, ChannelSpec(flat_budget=0.3))
    assert float(ch.mask[0, 0, 10, 12]) == pytest.approx(0.3, abs=1e-6)  # inside the square, on the flat side
