"""Siamese-Diffusion: the dense hint input and the parameter counts at SD shape against the
reference's layout; the objective (two weight-sharing branches, the noise-consistency term
and its stop-gradient); mask-only sampling; and, on the tiny preset, training through
``ccis train-generator`` with a stop and a resume, then sampling through ``ccis synthesize``."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from contextlib import contextmanager

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from ccis.diffusion.objective import Denoiser, NoisyBatch
from ccis.diffusion.presets import TINY_CONDITIONING_CHANNELS, sd_scheduler, tiny_unet
from ccis.diffusion.siamese import DenseHintInput, SiameseControlNetModel
from conftest import REPO, disc_mask

_spec = importlib.util.spec_from_file_location(
    "branch_params", REPO / "benchmarks" / "branch_params.py"
)
branch_params = importlib.util.module_from_spec(_spec)
sys.modules["branch_params"] = branch_params
_spec.loader.exec_module(branch_params)

SIDE = 32  # pixels; the tiny UNet's latent is 4×4
TERMS = ("mask", "image", "consistency", "renoised")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: these tiny models gain nothing from a second, and on a busy
    machine two threads each made a training step 40 times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _branch(**options) -> tuple[torch.nn.Module, SiameseControlNetModel]:
    torch.manual_seed(0)
    unet = tiny_unet(SIDE // 8).requires_grad_(False)
    branch = SiameseControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=TINY_CONDITIONING_CHANNELS, **options
    )
    return unet, branch


def _steering(branch: SiameseControlNetModel) -> SiameseControlNetModel:
    """Move the zero-initialised outputs, so the branch steers and its hints matter."""
    torch.manual_seed(1)
    with torch.no_grad():
        for conv in [*branch.controlnet_down_blocks, branch.controlnet_mid_block,
                     branch.controlnet_cond_embedding.conv_out]:  # fmt: skip
            conv.weight.add_(0.1 * torch.randn_like(conv.weight))
    return branch


def _batch(progress: float, timesteps=(50, 600)) -> NoisyBatch:
    torch.manual_seed(2)
    latents = torch.randn(2, 4, SIDE // 8, SIDE // 8)
    noise = torch.randn_like(latents)
    timesteps = torch.tensor(timesteps)
    scheduler = sd_scheduler()
    masks = torch.stack([torch.from_numpy(disc_mask(SIDE, SIDE, 12 + 6 * i, 14, 7)) / 255.0
                         for i in range(2)])[:, None]  # fmt: skip
    images = torch.rand(2, 3, SIDE, SIDE) * 2 - 1
    noisy = scheduler.add_noise(latents, noise, timesteps)
    return NoisyBatch(latents, noise, noisy, timesteps, masks, images, progress,
                      scheduler.alphas_cumprod)  # fmt: skip


def _denoiser(branch, unet) -> Denoiser:
    torch.manual_seed(3)
    return Denoiser(branch, unet, torch.randn(2, 77, unet.config.cross_attention_dim),
                    torch.float32)  # fmt: skip


def test_dense_hint_input_and_parameter_counts_match_the_reference_at_sd_shape():
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    dhi = DenseHintInput(3, 320)  # SD v1.5: hint 3 (cldm_v15.yaml), 16/32 → 256, zero → 320
    assert sum(p.numel() for p in dhi.parameters()) == branch_params.reference_siamese_dhi()
    hint = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        features = dhi.features(hint)
        assert features.shape == (1, 256, 8, 8)  # 1/8 of the side: the latent grid
        assert float(dhi(hint).abs().max()) == 0  # zero-initialised output: a no-op start
        # Default initialisation carries the mask: two different masks' features differ
        # by about their own size (a plain default-initialised conv stack loses it).
        mask = torch.zeros(1, 1, 64, 64)
        mask[..., 16:48, 20:52] = 1
        rgb = mask.expand(-1, 3, -1, -1)
        a, b = dhi.features(rgb), dhi.features(1 - rgb)
    assert float((a - b).norm() / a.norm()) > 0.3
    with init_empty_weights():
        ours = SiameseControlNetModel(cross_attention_dim=768)
        rgb = ControlNetModel(cross_attention_dim=768, conditioning_channels=3)
    count = branch_params.count
    reference = count(rgb) - count(rgb.controlnet_cond_embedding) + count(dhi)
    assert count(ours) == reference == 363_456_512


def test_branches_share_every_weight_and_the_mask_is_three_equal_channels():
    unet, branch = _branch()
    branch = _steering(branch)
    batch = _batch(0.5)
    text = torch.randn(2, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        from_mask = branch(batch.noisy, batch.timesteps, text, batch.masks, return_dict=False)
        rgb_mask = batch.masks.expand(-1, 3, -1, -1)
        same = branch(batch.noisy, batch.timesteps, text, rgb_mask, return_dict=False)
        from_image = branch(batch.noisy, batch.timesteps, text, (batch.images + 1) / 2,
                            return_dict=False)  # fmt: skip
    torch.testing.assert_close(from_mask[1], same[1], rtol=0, atol=0)
    assert not torch.allclose(from_mask[1], from_image[1])  # one network, two hints
    with pytest.raises(ValueError, match="1-channel mask or a 3-channel image"):
        branch(batch.noisy, batch.timesteps, text, torch.zeros(2, 2, SIDE, SIDE))


def test_consistency_term_is_zero_when_the_branches_agree():
    unet, branch = _branch()
    denoiser = _denoiser(branch, unet)
    # At the start the zero convolutions make both branches no-ops: they agree at any weight.
    # (Zero up to rounding: both predictions come from one batched UNet call, whose rows
    # may round differently.)
    _, terms = branch.training_loss(denoiser, _batch(0.9))
    assert float(terms["consistency"]) < 1e-10 * float(terms["mask"])
    torch.testing.assert_close(terms["image"], terms["mask"])
    # Trained, they agree while the image hint's weight (step / steps) is still 0 ...
    branch = _steering(branch)
    loss, terms = branch.training_loss(denoiser, _batch(0.0))
    assert float(terms["consistency"]) < 1e-10 * float(terms["mask"])
    torch.testing.assert_close(terms["image"], terms["mask"])
    assert float(terms["renoised"]) == 0  # not before a third of training
    torch.testing.assert_close(loss, terms["mask"] + terms["image"] + terms["consistency"])
    # ... and differ once it grows; the re-noised term runs after a third, for t ≤ 200 only.
    loss, terms = branch.training_loss(denoiser, _batch(0.5))
    assert float(terms["consistency"]) > 1e-6 and float(terms["renoised"]) > 0
    torch.testing.assert_close(loss, sum(terms[t] for t in TERMS))
    _, late = branch.training_loss(denoiser, _batch(0.5, timesteps=(600, 900)))
    assert float(late["renoised"]) == 0


def test_the_consistency_term_changes_the_update_and_the_stop_gradients_hold():
    def gradients(**weights) -> tuple[dict, torch.Tensor, torch.Tensor]:
        unet, branch = _branch(**weights)
        branch = _steering(branch)
        batch = _batch(0.25)  # the image hint at weight 0.25; no re-noised term yet
        masks, images = batch.masks.clone().requires_grad_(), batch.images.clone().requires_grad_()
        batch = dataclasses.replace(batch, masks=masks, images=images)
        loss, _ = branch.training_loss(_denoiser(branch, unet), batch)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in branch.named_parameters() if p.grad is not None}
        return grads, masks.grad, images.grad

    with_term, _, _ = gradients(consistency_weight=1.0)
    without, _, _ = gradients(consistency_weight=0.0)
    moved = [k for k in with_term if not torch.allclose(with_term[k], without[k])]
    assert len(moved) > len(with_term) // 2, "the consistency term barely changes the update"
    # ε_i is the consistency term's target (stopgrad): without the image branch's own term
    # nothing flows back to the image ...
    _, to_mask, to_image = gradients(consistency_weight=1.0, image_weight=0.0)
    assert to_image is None or float(to_image.abs().max()) == 0
    _, to_mask_too, to_image = gradients(consistency_weight=1.0, image_weight=1.0)
    assert float(to_image.abs().max()) > 0
    # ... and the image branch's term trains through the image hint only: the mask
    # residuals it adds to are detached, so the mask's gradient is the same either way.
    torch.testing.assert_close(to_mask, to_mask_too)


def test_sampling_needs_only_the_mask(tmp_path, monkeypatch):
    from ccis.diffusion.pipeline import CCISPipeline
    from ccis.diffusion.presets import tiny_components

    _, branch = _branch()
    branch = _steering(branch)
    # No image-only part: a mask-only forward reaches every weight of the branch.
    batch = _batch(0.0)
    text = torch.randn(2, 77, 64)
    down, mid = branch(batch.noisy, batch.timesteps, text, batch.masks, return_dict=False)
    sum(r.square().mean() for r in [*down, mid]).backward()
    unreached = [k for k, p in branch.named_parameters() if p.grad is None or not p.grad.any()]
    assert not unreached
    branch.save_pretrained(tmp_path / "siamese")
    loaded = SiameseControlNetModel.from_pretrained(tmp_path / "siamese").eval()
    assert loaded.config.consistency_weight == 1.0 and loaded.config.hint_channels == 3

    def no_training(*args, **kwargs):
        raise AssertionError("sampling must not run the training objective")

    monkeypatch.setattr(SiameseControlNetModel, "training_loss", no_training)
    parts = tiny_components(["a red polyp", "a flat polyp"], image_size=SIDE)
    parts["unet"] = _branch()[0]
    pipe = CCISPipeline(controlnet=loaded, **parts)
    masks = [disc_mask(SIDE, SIDE, 12, 14, 7), disc_mask(SIDE, SIDE, 20, 14, 7)]
    images = pipe(["a red polyp", "a flat polyp"], masks, num_inference_steps=2, seed=0,
                  progress=False)  # fmt: skip
    assert images.shape == (2, SIDE, SIDE, 3)
    # The mask steers the image (the branch is trained-like, not a no-op).
    other = pipe(["a red polyp", "a flat polyp"], masks[::-1], num_inference_steps=2, seed=0,
                 progress=False)  # fmt: skip
    assert not torch.allclose(torch.from_numpy(images), torch.from_numpy(other))


def _train_args(triplets, base, out, work):
    return [
        "train-generator", "--generator", "siamese", "--triplets", str(triplets),
        "--base", str(base), "--out", str(out), "--work", str(work), "--steps", "6",
        "--batch-size", "2", "--learning-rate", "1e-3", "--checkpoint-every", "100",
        "--resolution", str(SIDE), "--conditioning-channels", "4,4,4,4", "--threads", "1",
    ]  # fmt: skip


def test_siamese_trains_stops_resumes_and_samples_end_to_end(triplets, base, tmp_path, monkeypatch):
    import ccis.generator.train as train
    from ccis.cli import main
    from ccis.common.preemption import PREEMPTED_EXIT, StopRequest

    assert main(_train_args(triplets, base, tmp_path / "a", tmp_path / "wa")) == 0

    class StopAfterTwoSteps(StopRequest):  # as if SIGTERM came during step 2
        def agreed(self, accelerator=None) -> bool:
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == 2:
                self.signal_name = "SIGTERM"
            return bool(self)

    @contextmanager
    def stop_soon():
        yield StopAfterTwoSteps()

    monkeypatch.setattr(train, "stop_requests", stop_soon)
    args = _train_args(triplets, base, tmp_path / "b", tmp_path / "wb")
    assert main(args) == PREEMPTED_EXIT
    assert (tmp_path / "wb" / "checkpoints" / "checkpoint-2" / "complete").is_file()
    monkeypatch.undo()
    assert main(args) == 0  # resumes at step 2: the image weight and the gate follow the step
    a = load_file(tmp_path / "a" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "b" / "diffusion_pytorch_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    assert float(a["controlnet_cond_embedding.conv_out.weight"].abs().max()) > 0  # DHI trained

    log = pd.read_csv(tmp_path / "b" / "loss.csv")
    assert log["step"].tolist() == list(range(1, 7))
    assert list(log.columns) == ["step", "loss", *(f"loss_{t}" for t in TERMS), "seconds"]
    total = log[[f"loss_{t}" for t in TERMS]].sum(axis=1)
    assert (total - log["loss"]).abs().max() < 1e-5
    assert log["loss_consistency"].iloc[0] == 0  # step 1: image weight 0 and no-op outputs
    assert (log["loss_renoised"].iloc[:2] == 0).all()  # before a third of training
    assert log["loss_consistency"].iloc[-1] > 0

    out = tmp_path / "syn.parquet"
    assert main(["synthesize", "--generator", "siamese", "--base", str(base), "--branch",
                str(tmp_path / "b"), "--triplets", str(triplets), "--out", str(out), "--images",
                str(tmp_path / "syn"), "--steps", "2", "--resolution", str(SIDE),
                "--threads", "1"]) == 0  # fmt: skip
    frame = pd.read_parquet(out)
    assert len(frame) == 8 and frame["id"].str.startswith("synthetic-siamese-").all()
