import pytest
import torch

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.generator.checkpoints import generator_id, load_generator, save_generator
from model.generator.stylegan2 import Generator, GeneratorConfig

from .conftest import tiny_generator


def test_shapes_w_and_wplus(tiny_G):
    z = torch.randn(3, 32)
    img = tiny_G(z)
    assert img.shape == (3, 3, 32, 32) and img.dtype == torch.float32
    ws = tiny_G.map(z)
    assert ws.shape == (3, tiny_G.num_ws, 32)
    torch.testing.assert_close(tiny_G.synthesis(ws[:, 0]), img)  # W input broadcasts to W+
    ws2 = ws.clone()
    ws2[:, -1] += 1.0
    assert not torch.allclose(tiny_G.synthesis(ws2), img)        # every slot is read


def test_noise_modes_and_truncation(tiny_G):
    z = torch.randn(2, 32)
    const_a, const_b = tiny_G(z, noise_mode="const"), tiny_G(z, noise_mode="const")
    assert torch.equal(const_a, const_b)
    assert not torch.allclose(tiny_G(z, noise_mode="random"), const_a)
    assert not torch.allclose(tiny_G(z, noise_mode="none"), const_a)
    flat = tiny_G(z, psi=0.0)
    torch.testing.assert_close(flat[0], flat[1])                  # psi 0 → every sample is the mean w


def test_resolutions_and_upsample_modes():
    for res, up in [(8, "fir"), (64, "bilinear"), (128, "fir")]:
        ch = {r: 8 for r in [4 * 2 ** i for i in range(res.bit_length() - 2)]}
        G = Generator(GeneratorConfig(resolution=res, z_dim=16, w_dim=16, mapping_layers=1, channels=ch, upsample=up))
        assert G(torch.randn(2, 16)).shape == (2, 3, res, res)


def test_feature_layer_hooks(tiny_G):
    names = [n for n, _ in tiny_G.feature_layers()]
    assert names == ["b4.conv1", "b8.conv0", "b8.conv1", "b16.conv0", "b16.conv1", "b32.conv0", "b32.conv1"]
    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.shape)) for n, m in tiny_G.feature_layers()]
    tiny_G(torch.randn(2, 32))
    for h in hooks:
        h.remove()
    assert seen["b32.conv1"] == (2, 8, 32, 32) and seen["b4.conv1"] == (2, 32, 4, 4)


def test_own_format_round_trip(tmp_path, tiny_G):
    path = save_generator(tiny_G, tmp_path / "g.pt", meta={"note": "test"})
    G2 = load_generator(path)
    z = torch.randn(4, 32)
    assert torch.equal(G2(z), tiny_G(z))
    assert generator_id(G2) == generator_id(tiny_G) != generator_id(tiny_generator(seed=1))
    # Another kind of dgan file passed as a generator, and a generator passed as another kind, are named.
    enc = save_checkpoint(tmp_path / "enc.pt", "encoder", {"config": {}, "generator_id": "x", "state_dict": {}})
    with pytest.raises(CheckpointError, match="holds an inversion encoder .dgan-encoder., but a StyleGAN2 generator"):
        load_generator(enc)
    with pytest.raises(CheckpointError, match="holds a StyleGAN2 generator .dgan-generator., but an inversion encoder"):
        load_checkpoint(path, "encoder")


def test_gradients_reach_every_parameter():
    G = tiny_generator().train().requires_grad_(True)
    G(torch.randn(2, 32), noise_mode="random").square().mean().backward()
    missing = [n for n, p in G.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_fast_fir_upsampling_equals_the_reference_definition():
    from model.generator.ops import fir_filter, upfirdn2d, upsample2d_fir

    f = fir_filter()
    x = torch.randn(2, 5, 8, 8)
    torch.testing.assert_close(upsample2d_fir(x, f), upfirdn2d(x, f, up=2, pad=(2, 1, 2, 1), gain=4.0))
