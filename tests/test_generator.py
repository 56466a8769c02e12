"""Generator stages: bootstrap, training with kill-and-resume, synthesis with kill-and-resume,
corrupted checkpoints, Uni-ControlNet."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from ccis.common.checkpoints import complete_checkpoints
from ccis.generator.data import batch_indices
from conftest import run_env

CHANNELS = "4,4,4,4"


def test_bootstrap_writes_a_stable_diffusion_folder(base):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.vae.config.scaling_factor != 0.18215  # set from the data's latent spread
    ids = pipe.tokenizer("the polyp is red", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == pipe.tokenizer.bos_token_id


def test_bootstrap_losses_weight_the_polyp():
    from ccis.generator.bootstrap import _weighted_mean

    error = torch.zeros(2, 4, 8, 8)
    masks = torch.zeros(2, 1, 8, 8)
    masks[:, :, :2, :2] = 1.0  # the polyp: 4 of 64 cells
    error[:, :, :2, :2] = 1.0  # all of the error sits on it
    assert _weighted_mean(error, masks, 0.0) == pytest.approx(error.mean().item())
    # Weight 10: the polyp's 4 cells count 11 times each, out of 60 + 44 weighted cells.
    assert _weighted_mean(error, masks, 10.0) == pytest.approx(44 / 104)
    error = 1.0 - error  # the error outside the polyp counts less than unweighted
    assert _weighted_mean(error, masks, 10.0) < error.mean()


def test_texture_energy_sees_grain_wherever_it_falls():
    from ccis.generator.bootstrap import texture_energy

    g = torch.Generator().manual_seed(0)
    smooth = torch.linspace(-0.5, 0.5, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32)
    grain = smooth + 0.2 * torch.randn(1, 1, 32, 32, generator=g).expand(1, 3, 32, 32)
    shifted = torch.roll(grain, shifts=(1, 1), dims=(2, 3))
    e_smooth, e_grain, e_shifted = (texture_energy(x) for x in (smooth, grain, shifted))
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))  # (edges replicated)
    assert e_smooth.shape == (1, 1, 32, 32) and e_smooth[inner].abs().max() < 1e-5
    assert e_grain[inner].min() > 0.03
    # The same grain a pixel away: the pixels differ as much as the grain is strong, the
    # energies hardly at all, so the term asks for texture, not for its exact position.
    assert (grain - shifted)[inner].abs().mean() > 0.1
    assert (e_grain - e_shifted)[inner].abs().mean() < 0.2 * e_grain[inner].mean()


def test_the_texture_term_roughens_what_l1_leaves_smooth():
    # A decoder cannot know where a polyp's grain falls: fit one image to 64 draws of a
    # rough polyp that differ only in the grain. The bootstrap's L1 term alone is least
    # for the per-pixel median (a smooth polyp); with the texture term the fit keeps a
    # grain that the captioner measures as rough.
    from ccis.caption.attributes import measure_attributes
    from ccis.generator.bootstrap import _weighted_mean, texture_energy

    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    polyp = (((yy - 32) ** 2 + (xx - 32) ** 2) < 15**2).float().view(1, 1, 64, 64)
    mucosa = torch.tensor([0.7, -0.2, -0.3]).view(1, 3, 1, 1)
    targets = mucosa + polyp * (0.15 + 0.25 * torch.randn(64, 1, 64, 64, generator=g))
    mask = (polyp[0, 0].numpy() * 255).astype(np.uint8)

    def texture(image):
        pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().byte()[0].permute(1, 2, 0).numpy()
        return measure_attributes(pixels, mask).texture

    assert {texture(t[None]) for t in targets} == {"rough"}

    def fit(texture_weight: float) -> torch.Tensor:
        start = 1e-3 * torch.randn(1, 3, 64, 64, generator=g)  # no output is exactly flat
        image = (mucosa + polyp * 0.15 + start).requires_grad_(True)
        optimizer = torch.optim.Adam([image], lr=0.02)
        masks = polyp.expand(len(targets), -1, -1, -1)
        for _ in range(80):
            fitted = image.expand(len(targets), -1, -1, -1)
            loss = _weighted_mean((fitted - targets).abs(), masks, 10.0)
            energy = texture_energy(fitted) - texture_energy(targets)
            loss = loss + texture_weight * _weighted_mean(energy.abs(), masks, 10.0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return image.detach()

    assert texture(fit(0.0)) == "smooth"
    assert texture(fit(10.0)) == "rough"


def test_latent_channels_set_the_vae_and_the_unet():
    from ccis.diffusion.presets import tiny_components

    parts = tiny_components(["a red polyp"], image_size=32, latent_channels=8)
    assert parts["vae"].config.latent_channels == 8
    assert parts["unet"].config.in_channels == parts["unet"].config.out_channels == 8
    latents = parts["vae"].encode(torch.zeros(1, 3, 32, 32)).latent_dist.mean
    assert latents.shape == (1, 8, 4, 4)


def test_a_base_with_eight_latent_channels_trains_a_branch_and_samples(triplets, tmp_path):
    from diffusers import AutoencoderKL

    from ccis.generator.bootstrap import BootstrapSettings, bootstrap_base
    from ccis.generator.synthesize import synthesize
    from ccis.generator.train import TrainSettings, train_branch

    settings = BootstrapSettings(
        vae_steps=1, unet_steps=1, batch_size=2, resolution=32, latent_channels=8
    )
    base = bootstrap_base(triplets, tmp_path / "base", tmp_path / "bwork", settings)
    assert AutoencoderKL.from_pretrained(base / "vae").config.latent_channels == 8
    branch = train_branch(
        "ccis", triplets, base, tmp_path / "branch", tmp_path / "work",
        TrainSettings(steps=1, batch_size=2, resolution=32), conditioning_channels=(4, 4, 4, 4),
    )  # fmt: skip
    manifest = synthesize(
        "ccis", base, branch, triplets, tmp_path / "syn.parquet", tmp_path / "syn",
        steps=2, resolution=32, batch_size=4,
    )  # fmt: skip
    assert len(pd.read_parquet(manifest)) == 8


def test_bootstrap_resumed_in_the_unet_phase_ends_with_the_same_weights(triplets, tmp_path, caplog):
    import logging

    from ccis.generator.bootstrap import BootstrapSettings, bootstrap_base

    settings = BootstrapSettings(
        vae_steps=2, unet_steps=3, batch_size=2, resolution=32, checkpoint_every=3
    )
    whole = bootstrap_base(triplets, tmp_path / "whole", tmp_path / "work", settings)
    # The finished run left its step-3 checkpoint (UNet phase): a re-run resumes there.
    with caplog.at_level(logging.INFO, logger="ccis.common.checkpoints"):
        resumed = bootstrap_base(triplets, tmp_path / "resumed", tmp_path / "work", settings)
    assert "checkpoint-3 (step 3)" in caplog.text
    name = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(whole / name), load_file(resumed / name)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cached_posteriors_draw_the_latents_the_vae_would(triplets, base):
    # Training encodes the set once and samples each batch from the cache: the latents
    # must be the ones a per-batch encoder pass would have drawn with the same generator.
    from diffusers import AutoencoderKL
    from diffusers.utils.torch_utils import randn_tensor

    from ccis.generator.data import TripletData, encode_posteriors
    from ccis.generator.train import step_generator

    vae = AutoencoderKL.from_pretrained(base / "vae").eval()
    data = TripletData(triplets, 32)
    means, stds = encode_posteriors(vae, data, batch_size=3)
    assert means.shape == stds.shape == (len(data), 4, 4, 4)
    indices = [5, 0, 7, 2]
    images, _, _ = data.batch(indices)
    with torch.no_grad():
        expected = vae.encode(images).latent_dist.sample(generator=step_generator(0, 3))
    noise = randn_tensor(means[indices].shape, generator=step_generator(0, 3))
    torch.testing.assert_close(means[indices] + stds[indices] * noise, expected)
    assert not torch.allclose(means[indices], means[[0, 5, 7, 2]])  # rows follow the indices


def test_batch_indices_are_seeded_epoch_permutations():
    first = [i for step in range(5) for i in batch_indices(step, 2, 10, seed=3)]
    assert sorted(first) == list(range(10))
    assert first == [i for step in range(5) for i in batch_indices(step, 2, 10, seed=3)]
    second = [i for step in range(5, 10) for i in batch_indices(step, 2, 10, seed=3)]
    assert sorted(second) == list(range(10)) and second != first


def _train_cmd(triplets, base, out, work, steps=16, generator="ccis"):
    return [
        sys.executable, "-m", "ccis.cli", "train-generator", "--generator", generator,
        "--triplets", str(triplets), "--base", str(base), "--out", str(out), "--work", str(work),
        "--steps", str(steps), "--batch-size", "2", "--learning-rate", "1e-3",
        "--checkpoint-every", "4", "--resolution", "32", "--conditioning-channels", CHANNELS,
        "--threads", "1",
    ]  # fmt: skip


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.05)
    raise AssertionError("the process ended before it could be killed")


@pytest.fixture(scope="module")
def straight(triplets, base, tmp_path_factory):
    """The branch of an uninterrupted 16-step run: the reference that the kill, stop and
    clipping tests compare with, and the branch that the synthesis test samples from (one
    run for all: each ``ccis`` process spends most of its time importing torch)."""
    root = tmp_path_factory.mktemp("straight")
    done = subprocess.run(_train_cmd(triplets, base, root / "branch", root / "work"),
                          env=run_env(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (root / "train.log").write_text(done.stderr)  # what the clipping test reads
    return root / "branch"


def _assert_same_weights(a_dir, b_dir) -> dict[str, torch.Tensor]:
    """Assert both branches hold the same weights; return the first's."""
    a = load_file(a_dir / "diffusion_pytorch_model.safetensors")
    b = load_file(b_dir / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    return a


def test_training_resumes_after_sigkill_and_matches_an_uninterrupted_run(
    triplets, base, straight, tmp_path
):
    cmd = _train_cmd(triplets, base, tmp_path / "b", tmp_path / "wb")
    proc = subprocess.Popen(
        cmd, env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _kill_when(
        proc, lambda: (tmp_path / "wb" / "checkpoints" / "checkpoint-8" / "complete").is_file()
    )
    assert not (tmp_path / "b").exists()
    resumed = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr and "(step 8)" in resumed.stderr
    loss = pd.read_csv(tmp_path / "b" / "loss.csv")
    assert loss["step"].tolist() == list(range(1, 17))  # no step lost, none twice
    # TAAM's λ is logged per block and moves from its start (1.0), in every block with more
    # than one token: Adam's first step alone moves a parameter with a gradient by about
    # its learning rate (1e-3), so λ = softplus(raw) by ~0.63e-3; later steps may bring it
    # back. (At 32 px the mid block sees a 1×1 latent: attention over a single key ignores
    # any bias, so its λ gets no gradient and stays.)
    moved = (loss[["lambda_0", "lambda_1", "lambda_2"]] - 1.0).abs().max()
    assert moved["lambda_0"] > 4e-4 and moved["lambda_1"] > 4e-4 and moved["lambda_2"] == 0
    a = _assert_same_weights(straight, tmp_path / "b")
    assert any(float(v.abs().max()) > 0 for k, v in a.items() if "controlnet_down_blocks" in k)


def test_sigterm_checkpoints_the_step_exits_75_and_resumes_to_the_same_weights(
    triplets, base, straight, tmp_path
):
    """A SLURM preemption (SIGTERM) mid-run: the step in hand ends, is checkpointed (off the
    every-4-steps schedule), ``ccis`` exits 75, and the re-run ends where an uninterrupted
    run does."""
    from ccis.common.preemption import PREEMPTED_EXIT

    steps = 16  # as the uninterrupted run
    cmd = _train_cmd(triplets, base, tmp_path / "b", tmp_path / "wb", steps)
    log = tmp_path / "b.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, env=run_env(), stdout=subprocess.DEVNULL, stderr=err)
        loss = tmp_path / "wb" / "loss.csv"
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline:
            if loss.is_file() and len(loss.read_text().splitlines()) >= 2:  # step 1 done
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.02)
        assert proc.wait(timeout=240) == PREEMPTED_EXIT, log.read_text()[-3000:]
    text = log.read_text()
    assert "received SIGTERM" in text and "stopped on SIGTERM" in text and "Traceback" not in text
    saved = sorted((tmp_path / "wb" / "checkpoints").glob("checkpoint-*/complete"))
    assert len(saved) == 1 and not (tmp_path / "b").exists()
    step = int(saved[0].parent.name.split("-")[1])
    assert 1 <= step < steps and f"checkpoint-{step}" in text
    resumed = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"(step {step})" in resumed.stderr
    assert pd.read_csv(tmp_path / "b" / "loss.csv")["step"].tolist() == list(range(1, steps + 1))
    _assert_same_weights(straight, tmp_path / "b")


def test_bootstrap_stops_on_sigusr1_with_a_checkpoint(triplets, tmp_path, monkeypatch):
    """SIGUSR1 (SLURM's warning before the time limit) during bootstrap: checkpoint of the
    step in hand, Preempted raised; the re-run resumes there."""
    import os

    import ccis.generator.bootstrap as boot
    from ccis.common.preemption import Preempted

    settings = boot.BootstrapSettings(
        vae_steps=2, unet_steps=2, batch_size=2, resolution=32, checkpoint_every=0
    )
    posteriors = boot._posteriors

    def signal_then_encode(*args, **kwargs):  # runs on the first UNet step (step 3)
        os.kill(os.getpid(), signal.SIGUSR1)
        return posteriors(*args, **kwargs)

    monkeypatch.setattr(boot, "_posteriors", signal_then_encode)
    with pytest.raises(Preempted, match="stopped on SIGUSR1") as stopped:
        boot.bootstrap_base(triplets, tmp_path / "base", tmp_path / "work", settings)
    assert stopped.value.checkpoint.name == "checkpoint-3"
    assert (stopped.value.checkpoint / "complete").is_file() and not (tmp_path / "base").exists()
    monkeypatch.setattr(boot, "_posteriors", posteriors)
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers put back
    boot.bootstrap_base(triplets, tmp_path / "base", tmp_path / "work", settings)
    assert (tmp_path / "base" / "unet").is_dir()


class _NanGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradients are not."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


@pytest.mark.parametrize("what", ["loss", "gradient norm"])
def test_divergence_stops_at_the_step_and_keeps_the_last_good_checkpoint(
    what, triplets, base, tmp_path, monkeypatch
):
    import ccis.diffusion.objective as objective
    import ccis.generator.train as train
    from ccis.common.divergence import Diverged

    mse, calls = objective.F.mse_loss, []  # the loop's default objective's MSE

    def poisoned_on_step_3(*args, **kwargs):
        calls.append(1)
        loss = mse(*args, **kwargs)
        if len(calls) != 3:
            return loss
        return loss * float("nan") if what == "loss" else _NanGradient.apply(loss)

    monkeypatch.setattr(objective.F, "mse_loss", poisoned_on_step_3)
    settings = train.TrainSettings(
        steps=5, batch_size=2, learning_rate=1e-3, checkpoint_every=2, resolution=32
    )
    work = tmp_path / "work"
    expected = rf"diverged at step 3: the {what} is nan.*checkpoint-2 \(step 2, intact\)"
    with pytest.raises(Diverged, match=expected):
        train.train_branch("ccis", triplets, base, tmp_path / "out", work, settings,
                           conditioning_channels=(4, 4, 4, 4))  # fmt: skip
    assert [p.name for p in (work / "checkpoints").iterdir()] == ["checkpoint-2"]
    for weights in (work / "checkpoints" / "checkpoint-2").glob("*.safetensors"):
        assert all(torch.isfinite(v).all() for v in load_file(weights).values())
    assert pd.read_csv(work / "loss.csv")["step"].tolist() == [1, 2]  # no NaN row
    assert not (tmp_path / "out").exists()


def test_gradient_norm_clipping_bounds_the_update(triplets, base, straight, tmp_path):
    """Clipped to a norm far below Adam's ε, the step nearly vanishes: the clip acts. (The
    unclipped run is the same command without the flag.)"""
    cmd = _train_cmd(triplets, base, tmp_path / "clipped", tmp_path / "w")
    done = subprocess.run([*cmd, "--max-grad-norm", "1e-10"], env=run_env(), capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "gradient norm clip 1e-10" in done.stderr
    assert "gradient norm clip 1e-10" not in (straight.parent / "train.log").read_text()
    moved = {}
    for name, branch in (("default", straight), ("clipped", tmp_path / "clipped")):
        weights = load_file(branch / "diffusion_pytorch_model.safetensors")
        moved[name] = max(float(v.abs().max()) for k, v in weights.items()
                          if k.startswith("controlnet_down_blocks") and k.endswith("weight"))  # fmt: skip
    assert moved["default"] > 1e-3 and moved["clipped"] < 0.1 * moved["default"], moved


def test_corrupted_checkpoint_is_a_clear_error(triplets, base, straight, tmp_path):
    """The uninterrupted run's work folder with its newest checkpoint truncated: the same
    command (to a new output) names the checkpoint and exits 2, without a traceback."""
    work = shutil.copytree(straight.parent / "work", tmp_path / "w")
    step, newest = complete_checkpoints(work / "checkpoints")[-1]
    weights = next(newest.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    cmd = _train_cmd(triplets, base, tmp_path / "m", work)
    again = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 2, again.stderr[-3000:]
    assert f"checkpoint of step {step} is corrupted or unreadable" in again.stderr
    assert "Traceback" not in again.stderr and not (tmp_path / "m").exists()


def test_synthesis_resumes_after_a_kill(triplets, base, straight, tmp_path):
    images = tmp_path / "syn" / "shard0"
    cmd = [
        sys.executable, "-m", "ccis.cli", "synthesize", "--generator", "ccis", "--base", str(base),
        "--branch", str(straight), "--triplets", str(triplets),
        "--out", str(tmp_path / "syn.part0.parquet"), "--images", str(images), "--shard", "0/1",
        "--steps", "4", "--resolution", "32", "--batch-size", "1", "--threads", "1",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _kill_when(proc, lambda: len(list((images / "images").glob("*.png"))) >= 2)
    killed = len(list((images / "images").glob("*.png")))
    # SIGTERM (preemption): the image in hand is finished and written, then exit 75.
    from ccis.common.preemption import PREEMPTED_EXIT

    proc = subprocess.Popen(cmd, env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while len(list((images / "images").glob("*.png"))) <= killed and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=240)[1].decode()
    assert proc.returncode == PREEMPTED_EXIT, stderr[-3000:]
    assert "stopped on SIGTERM" in stderr
    before = {p.name: p.stat().st_mtime_ns for p in (images / "images").glob("*.png")}
    assert killed < len(before) < 8 and not (tmp_path / "syn.part0.parquet").exists()
    assert not list(images.rglob(".*.tmp-*"))  # every file written is whole
    for path in (images / "images").glob("*.png"):
        assert (images / "masks" / path.name).is_file()
    done = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"{len(before)} done before" in done.stderr
    after = {p.name: p.stat().st_mtime_ns for p in (images / "images").glob("*.png")}
    assert len(after) == 8 and all(after[name] == mtime for name, mtime in before.items())
    table = pd.read_parquet(tmp_path / "syn.part0.parquet")
    assert len(table) == 8 and table["id"].str.startswith("synthetic-ccis-phantom-").all()
    for row in table.itertuples():
        image = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / row.image))
        mask = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / row.mask))
        assert image.shape[:2] == mask.shape == (80, 96) and set(np.unique(mask)) <= {0, 255}


def test_recolour_and_polyp_chroma():
    from ccis.metrics.text_adherence import polyp_chroma, recolour

    assert recolour("The polyp is reddish and round.", "pale") == "The polyp is pale and round."
    assert recolour("A round polyp.", "red") == "The polyp is red. A round polyp."
    image = np.zeros((4, 4, 3))
    image[..., 0], image[:2, :, 1] = 0.8, 0.6  # top half paler (more green)
    mask = np.zeros((4, 4), np.uint8)
    mask[:2] = 255
    assert polyp_chroma(image, mask) == pytest.approx(0.75)
    assert np.isnan(polyp_chroma(image, np.zeros((4, 4))))


def test_uni_controlnet_adapter_as_the_reference_builds_it(base, tmp_path):
    from ccis.diffusion.presets import load_sd15
    from ccis.diffusion.unicontrolnet import FDN, UniControlNetAdapter
    from ccis.generator.registry import build_branch

    parts = load_sd15(base)
    unet = parts["unet"]
    inject = (6, 8, 10)[: len(unet.down_blocks)]
    adapter = build_branch(
        "unicontrolnet", unet, extractor_channels=(4, 6, 8), inject_channels=inject
    )
    assert isinstance(adapter, UniControlNetAdapter)
    for level, block in enumerate(adapter.down_blocks):
        resnet = block.resnets[0]
        for norm in (resnet.norm1, resnet.norm2):  # FDN on both norms, parameter-free GN
            assert isinstance(norm, FDN) and norm.level == level and not norm.norm.affine
            assert norm.gamma.in_channels == inject[level]
        assert all(not isinstance(r.norm1, FDN) for r in block.resnets[1:])
    # SD's affine weights of the replaced norms are dropped, the rest copy the UNet.
    assert not any(k.startswith("down_blocks.") and ".resnets.0.norm1.weight" in k
                   for k in adapter.state_dict())  # fmt: skip
    torch.testing.assert_close(adapter.down_blocks[0].resnets[0].conv1.weight,
                               unet.down_blocks[0].resnets[0].conv1.weight)  # fmt: skip
    extractor = adapter.controlnet_cond_embedding.extractor
    assert [z.out_channels for z in extractor.zero_convs] == list(inject)

    side = 8 * unet.config.sample_size
    latents = torch.randn(2, 4, side // 8, side // 8)
    text = torch.randn(2, 77, unet.config.cross_attention_dim)
    masks = (torch.rand(2, 1, side, side) > 0.5).float()
    t = torch.tensor([5, 9])
    maps = extractor(masks)
    assert [m.shape[-1] for m in maps] == [side // 8 // 2**k for k in range(len(inject))]
    # Zero start: the frozen UNet's prediction is unchanged.
    down, mid = adapter(latents, t, text, masks, return_dict=False)
    assert all(float(r.detach().abs().max()) == 0 for r in [*down, mid])
    with torch.no_grad():
        plain = unet(latents, t, encoder_hidden_states=text).sample
        steered = unet(latents, t, encoder_hidden_states=text,
                       down_block_additional_residuals=down, mid_block_additional_residual=mid).sample  # fmt: skip
    assert torch.equal(plain, steered)
    # Once the outputs have moved, gradients reach every level's zero convolution.
    with torch.no_grad():
        for conv in [*adapter.controlnet_down_blocks, adapter.controlnet_mid_block]:
            conv.weight.add_(0.05 * torch.randn_like(conv.weight))
    down, mid = adapter(latents, t, text, masks, return_dict=False)
    sum(r.square().mean() for r in [*down, mid]).backward()
    for level, zero in enumerate(extractor.zero_convs):
        assert float(zero.weight.grad.abs().sum()) > 0, level
    # FDN modulates: with non-zero level maps, the mask changes the encoder features.
    with torch.no_grad():
        for zero in extractor.zero_convs:
            zero.weight.add_(0.05 * torch.randn_like(zero.weight))
        a = adapter(latents, t, text, masks, return_dict=False)[1]
        b = adapter(latents, t, text, 1 - masks, return_dict=False)[1]
    assert not torch.allclose(a, b)
    adapter.save_pretrained(tmp_path / "uni")
    loaded = UniControlNetAdapter.from_pretrained(tmp_path / "uni")
    assert list(loaded.config.inject_channels) == list(inject)
    with torch.no_grad():
        torch.testing.assert_close(loaded(latents, t, text, masks, return_dict=False)[1], a)
    with pytest.raises(ValueError, match="inject_channels has 1 levels"):
        build_branch("unicontrolnet", unet, inject_channels=(8,))
