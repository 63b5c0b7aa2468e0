import numpy as np
import pytest
import torch

from model.generator.checkpoints import generator_id
from model.inversion import LatentEncoder, invert, psnr, train_encoder

from .conftest import tiny_generator


def test_encoder_and_optimisation_reconstruct_generated_images(tmp_path, tiny_G):
    enc = train_encoder(tiny_G, steps=60, batch=16, base=8, lr=3e-3)
    path = enc.save(tmp_path / "enc.pt")
    enc = LatentEncoder.load(path, gen_id=generator_id(tiny_G))
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
    with pytest.raises(ValueError, match="trained for generator"):
        LatentEncoder.load(path, gen_id=generator_id(tiny_generator(seed=3)))
