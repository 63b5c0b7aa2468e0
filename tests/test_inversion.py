import numpy as np
import pytest
import torch

from model.checkpoint import CheckpointError
from model.generator.checkpoints import generator_id
from model.inversion import LatentEncoder, invert, psnr, train_encoder

from .conftest import tiny_generator


def test_encoder_and_optimisation_reconstruct_generated_images(tmp_path, tiny_G):
    enc = train_encoder(tiny_G, steps=60, batch=16, base=8, lr=3e-3)
    path = enc.save(tmp_path / "enc.pt")
    enc = LatentEncoder.load(path, generator_id=generator_id(tiny_G))
    with torch.no_grad():
        target_ws = tiny_G.map(torch.randn(4, 32, generator=torch.Generator().manual_seed(7)))
        target = tiny_G.synthesis(target_ws)
    res = invert(tiny_G, target, encoder=enc, steps=40, lr=0.05)
    assert res.ws.shape == (4, tiny_G.num_ws, 32) and res.images.shape == target.shape
    assert (res.psnr_db > res.psnr_encoder_db).all()            # optimisation improves on the encoder start
    no_enc = invert(tiny_G, target, encoder=None, steps=0)
    assert res.psnr_encoder_db.mean() > no_enc.psnr_db.mean()   # the encoder beats starting at w_avg
    torch.testing.assert_close(psnr(res.images, target), torch.from_numpy(res.psnr_db))
    again = invert(tiny_G, target, encoder=enc, steps=40, lr=0.05)
    assert np.array_equal(again.psnr_db, res.psnr_db)            # deterministic
    with pytest.raises(CheckpointError, match="encoder trained for generator .*dgan train-encoder"):
        LatentEncoder.load(path, generator_id=generator_id(tiny_generator(seed=3)))


def test_discriminator_feature_loss_round_trip_and_gradient(tmp_path, tiny_G):
    from model.generator.discriminator import (Discriminator, DiscriminatorConfig, load_discriminator,
                                               save_discriminator)
    from model.inversion import DiscriminatorFeatureLoss

    torch.manual_seed(0)
    D = Discriminator(DiscriminatorConfig(resolution=32, channels={4: 16, 8: 16, 16: 16, 32: 8}))
    path = save_discriminator(D, tmp_path / "d.pt", generator_id(tiny_G))
    D2 = load_discriminator(path, generator_id=generator_id(tiny_G))
    with pytest.raises(CheckpointError, match="discriminator trained with generator .* not for the loaded "
                                              "generator someone-else"):
        load_discriminator(path, generator_id="someone-else")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(D2(x), D.eval()(x))
    loss = DiscriminatorFeatureLoss(D2, blocks=2, weight=1.0)
    assert float(loss(x, x)) == 0.0                              # identical images: no distance
    y = x.clone().requires_grad_(True)
    value = loss(y, -x)
    value.backward()
    assert 0 < float(value.detach()) <= 4 * 3 * 2 and y.grad.abs().sum() > 0   # ≤ 4 per layer and image

    # Inverting with it still reconstructs (pixel + features), deterministically.
    with torch.no_grad():
        target = tiny_G.synthesis(tiny_G.map(torch.randn(2, 32, generator=torch.Generator().manual_seed(1))))
    a = invert(tiny_G, target, steps=20, feature_loss=DiscriminatorFeatureLoss(D2))
    b = invert(tiny_G, target, steps=20, feature_loss=DiscriminatorFeatureLoss(D2))
    assert (a.psnr_db > a.psnr_encoder_db).all() and np.array_equal(a.psnr_db, b.psnr_db)


def test_encoder_is_stored_in_half_precision(tmp_path, tiny_G):
    enc = train_encoder(tiny_G, steps=2, batch=4, base=8)
    path = enc.save(tmp_path / "enc.pt")
    stored = torch.load(path, weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    loaded = LatentEncoder.load(path)
    assert loaded.encoder.head.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.encoder(x), enc.encoder.eval()(x), atol=2e-3, rtol=1e-2)
