"""CCIS-Diff: zero start, ControlNet equivalence, text scores, gradients, save/load,
the pipeline, and that the mask control actually works after a short over-fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, StableDiffusionPipeline

from ccis.data.phantom import render_phantom
from ccis.diffusion.model import CCISControlNetModel
from ccis.diffusion.pipeline import CCISPipeline, masks_to_tensor
from ccis.diffusion.presets import TINY_CONDITIONING_CHANNELS, load_sd15, tiny_components
from ccis.diffusion.taam import (
    content_token_mask,
    key_bias_attention,
    text_scores,
    token_grid,
)

PROMPTS = ["the polyp is red , round and smooth", "a pale polyp against pink mucosa", ""]


@pytest.fixture(scope="module")
def base():
    components = tiny_components(PROMPTS, seed=0)
    for name in ("vae", "text_encoder", "unet"):
        components[name].requires_grad_(False)
    return components


def _branch(base, **switches) -> CCISControlNetModel:
    torch.manual_seed(1)
    return CCISControlNetModel.from_unet(
        base["unet"], conditioning_embedding_out_channels=TINY_CONDITIONING_CHANNELS, **switches
    )


def _inputs(base, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = base["tokenizer"](
        PROMPTS[:batch], padding="max_length", max_length=77, return_tensors="pt"
    )
    with torch.no_grad():
        text = base["text_encoder"](tokens.input_ids)[0]
    masks = masks_to_tensor([render_phantom(0, 0, i, 64, 64).mask for i in range(batch)])
    latents = torch.randn(batch, 4, 8, 8, generator=g)
    t = torch.tensor([500, 100])[:batch]
    return latents, t, text, masks, tokens.attention_mask


def _perturb_zero_layers(model, scale=0.05, seed=3):
    """Give the zero-initialised layers small random weights, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().max() == 0:
                p.add_(scale * torch.randn(p.shape, generator=g))


def test_at_initialisation_the_unet_prediction_is_unchanged(base):
    branch = _branch(base)
    latents, t, text, masks, attention = _inputs(base)
    down, mid = branch(latents, t, text, masks, text_key_mask=attention.bool(), return_dict=False)
    assert all(float(r.detach().abs().max()) == 0.0 for r in [*down, mid])
    unet = base["unet"]
    with torch.no_grad():
        plain = unet(latents, t, encoder_hidden_states=text).sample
        steered = unet(latents, t, encoder_hidden_states=text,
                       down_block_additional_residuals=down, mid_block_additional_residual=mid).sample  # fmt: skip
    assert torch.equal(plain, steered)


def test_switches_off_is_numerically_diffusers_controlnet(base):
    plain = ControlNetModel.from_unet(
        base["unet"], conditioning_embedding_out_channels=TINY_CONDITIONING_CHANNELS,
        conditioning_channels=1,
    )  # fmt: skip
    _perturb_zero_layers(plain)
    config = {k: v for k, v in plain.config.items() if not k.startswith("_")}
    ours = CCISControlNetModel(**config, bmws=False, taam=False)
    ours.load_state_dict(plain.state_dict(), strict=True)
    latents, t, text, masks, attention = _inputs(base)
    with torch.no_grad():
        a_down, a_mid = plain(latents, t, text, masks, return_dict=False)
        b_down, b_mid = ours(
            latents, t, text, masks, text_key_mask=attention.bool(), return_dict=False
        )
    assert float(a_mid.abs().max()) > 0  # the comparison is not between zeros
    for a, b in zip([*a_down, a_mid], [*b_down, b_mid], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_switches_change_the_modules_and_survive_save_load(base, tmp_path):
    full = _branch(base)
    assert type(full.controlnet_cond_embedding).__name__ == "MaskConditioningEmbedding"
    assert full.taam_lambdas().shape == (len(full.transformer_blocks()),)
    # λ starts where the bias matters: log(1 + λ·S) doubles the most text-relevant key.
    torch.testing.assert_close(
        full.taam_lambdas().detach(), torch.ones(len(full.transformer_blocks()))
    )
    assert _branch(base, taam_lambda=0.25).taam_lambdas().detach()[0] == pytest.approx(0.25)
    no_taam, no_bmws = _branch(base, taam=False), _branch(base, bmws=False)
    no_reinject = _branch(base, reinject=False)
    assert no_taam.taam_lambdas() is None and not hasattr(no_bmws, "blur_reinjection")
    assert hasattr(no_taam, "blur_reinjection")  # w/o TAAM keeps the re-injection
    assert not hasattr(no_reinject, "blur_reinjection") and no_reinject.taam_lambdas() is not None
    _perturb_zero_layers(full)
    full.save_pretrained(tmp_path / "branch")
    assert sorted(p.name for p in (tmp_path / "branch").iterdir()) == [
        "config.json", "diffusion_pytorch_model.safetensors"]  # fmt: skip
    loaded = CCISControlNetModel.from_pretrained(tmp_path / "branch")
    assert loaded.config.bmws and loaded.config.taam
    latents, t, text, masks, attention = _inputs(base)
    with torch.no_grad():
        a = full(latents, t, text, masks, text_key_mask=attention.bool(), return_dict=False)
        b = loaded(latents, t, text, masks, text_key_mask=attention.bool(), return_dict=False)
    for x, y in zip([*a[0], a[1]], [*b[0], b[1]], strict=True):
        torch.testing.assert_close(x, y)


def _same_weights(source, target) -> None:
    """Load ``source``'s weights into ``target`` (which has a subset of its parameters)."""
    own = target.state_dict()
    target.load_state_dict({k: v for k, v in source.state_dict().items() if k in own}, strict=True)


def _text(base, prompts):
    tokens = base["tokenizer"](prompts, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        return base["text_encoder"](tokens.input_ids)[0], tokens.attention_mask.bool()


def test_taam_at_lambda_one_acts_on_prompts_and_not_on_the_empty_prompt(base):
    full = _branch(base)
    _perturb_zero_layers(full)  # the branch's outputs as after some training
    no_taam = _branch(base, taam=False)
    _same_weights(full, no_taam)
    latents, t, _, masks, _ = _inputs(base, batch=2)

    def residuals(model, prompts):
        text, keys = _text(base, prompts)
        with torch.no_grad():
            down, mid = model(latents, t, text, masks, text_key_mask=keys, return_dict=False)
        return torch.cat([r.flatten(1) for r in [*down, mid]], dim=1)

    prompts = PROMPTS[:2]
    on, off = residuals(full, prompts), residuals(no_taam, prompts)
    # The bias changes every image's residuals by a visible share (at λ = 0.018 it was ~50×
    # smaller).
    change = (on - off).norm(dim=1) / off.norm(dim=1)
    assert float(change.min()) > 0.01, change
    # The empty prompt (CFG's unconditional half) has S = 0: no bias, the same residuals.
    torch.testing.assert_close(residuals(full, ["", ""]), residuals(no_taam, ["", ""]),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("d", [8, 40])  # 40: SD v1.5's first blocks (320 channels, 8 heads)
def test_key_bias_attention_equals_the_masked_softmax_and_its_gradients(d):
    """TAAM's bias as an extra key channel is softmax(QKᵀ/√d + log(1 + λS))·V, as the float
    mask gave it: same values, same gradients for λ and for Q, K, V."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 50, d, generator=g, dtype=torch.float64) for _ in range(3))
    scores = torch.rand(2, 50, generator=g, dtype=torch.float64)
    scores[1] = 0  # an empty prompt: no bias

    def run(attention):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        lam = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
        out = attention(*leaves, torch.log1p(lam * scores))
        (out * torch.linspace(-1, 1, d, dtype=torch.float64)).square().sum().backward()
        return out, lam.grad, [t.grad for t in leaves]

    def masked(query, key, value, bias):
        return F.scaled_dot_product_attention(query, key, value, attn_mask=bias[:, None, None, :])

    out, lam_grad, grads = run(key_bias_attention)
    ref, ref_lam_grad, ref_grads = run(masked)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lam_grad, ref_lam_grad, rtol=1e-10, atol=1e-12)
    assert abs(float(lam_grad)) > 1e-3  # λ does learn through it
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    # The bias matters: without it the output differs.
    assert (out - masked(q, k, v, torch.zeros(2, 50, dtype=torch.float64))).abs().max() > 1e-3


@pytest.mark.filterwarnings("ignore:Flash attention kernel not used")  # the float mask's
def test_taam_self_attention_runs_in_the_fused_kernel(base):
    """With only the fused (flash) kernel allowed, TAAM's forward and backward run; the
    float mask needing λ's gradient had no fused kernel (the reason for the key channel)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    branch = _branch(base)
    _perturb_zero_layers(branch)
    latents, t, text, masks, keys = _inputs(base, batch=2)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        down, mid = branch(latents, t, text, masks, text_key_mask=keys.bool(), return_dict=False)
        sum(r.square().mean() for r in [*down, mid]).backward()
    assert branch.taam_lambda.grad is not None and branch.taam_lambda.grad.abs().max() > 0
    q = torch.randn(1, 2, 16, 8, requires_grad=True)
    bias = torch.log1p(torch.rand(1, 16, requires_grad=True))
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), pytest.raises(RuntimeError):
        F.scaled_dot_product_attention(q, q, q, attn_mask=bias[:, None, None, :]).sum().backward()


def test_reinjection_has_an_effect_of_its_own(base):
    full = _branch(base)
    _perturb_zero_layers(full)
    no_reinject = _branch(base, reinject=False)
    _same_weights(full, no_reinject)
    latents, t, text, masks, keys = _inputs(base, batch=2)
    with torch.no_grad():
        a = full(latents, t, text, masks, text_key_mask=keys.bool(), return_dict=False)[1]
        b = no_reinject(latents, t, text, masks, text_key_mask=keys.bool(), return_dict=False)[1]
    assert float((a - b).norm() / b.norm()) > 0.01


def test_set_attn_processor_cannot_silently_drop_taam(base):
    from diffusers.models.attention_processor import AttnProcessor2_0

    from ccis.diffusion.taam import BlurReinjectionProcessor, TextAwareSelfAttnProcessor

    full = _branch(base)
    _perturb_zero_layers(full)
    latents, t, text, masks, keys = _inputs(base, batch=2)

    def mid():
        with torch.no_grad():
            return full(latents, t, text, masks, text_key_mask=keys.bool(), return_dict=False)[1]

    before = mid()
    full.set_attn_processor(AttnProcessor2_0())
    kinds = {type(p) for p in full.attn_processors.values()}
    assert {TextAwareSelfAttnProcessor, BlurReinjectionProcessor} <= kinds
    torch.testing.assert_close(mid(), before)
    # ControlNet (every switch off) takes whatever processor it is given.
    plain = _branch(base, bmws=False, taam=False, reinject=False)
    plain.set_attn_processor(AttnProcessor2_0())
    assert {type(p) for p in plain.attn_processors.values()} == {AttnProcessor2_0}


def test_each_ablation_differs_from_ccis_in_the_switch_it_names(base):
    from ccis.generator import ABLATIONS, REGISTRY
    from ccis.generator.registry import build_branch

    def config(name):
        model = build_branch(
            name, base["unet"], conditioning_embedding_out_channels=TINY_CONDITIONING_CHANNELS
        )
        return {k: v for k, v in model.config.items() if not k.startswith("_")}

    full = config("ccis")
    named = {"ccis_no_bmws": {"bmws"}, "ccis_no_taam": {"taam"},
             "ccis_no_reinject": {"reinject"}, "controlnet": {"bmws", "taam", "reinject"}}  # fmt: skip
    assert set(ABLATIONS) == {"ccis_no_bmws", "ccis_no_taam", "ccis_no_reinject"}
    for name, switches in named.items():
        other = config(name)
        assert {k for k in full if full[k] != other[k]} == switches, name
        assert all(not other[k] for k in switches) and REGISTRY[name].switches == {
            k: k not in switches for k in ("bmws", "taam", "reinject")}  # fmt: skip
        assert name == "controlnet" or REGISTRY[name].removes


def test_bmws_gate_reads_the_encoders_hidden_features(base):
    """The gate's input is the two encoders' features before their zero-initialised
    outputs: non-zero from the start, so its gradient is first order in the outputs'
    weights (reading the outputs, it was second order and the gate learned last)."""
    from ccis.diffusion.bmws import blur_mask

    embedding = _branch(base).controlnet_cond_embedding
    masks = masks_to_tensor([render_phantom(0, 0, i, 64, 64).mask for i in range(2)])
    with torch.no_grad():
        hidden = embedding._both_hidden(masks, blur_mask(masks, embedding.blur_sigma))
    assert all(float(h.abs().max()) > 1e-2 for h in hidden)
    assert float(embedding.conv_out.weight.abs().max()) == 0  # the outputs start at zero
    g = torch.Generator().manual_seed(0)
    directions = [torch.randn(c.weight.shape, generator=g)
                  for c in (embedding.conv_out, embedding.blur_embedding.conv_out)]  # fmt: skip
    upstream = torch.randn(embedding(masks).shape, generator=g)

    initial = {k: v.clone() for k, v in embedding.state_dict().items()}

    def first_layer_gradient(size: float) -> float:
        e = embedding
        e.load_state_dict(initial)
        e.zero_grad(set_to_none=True)
        with torch.no_grad():
            for conv, direction in zip((e.conv_out, e.blur_embedding.conv_out), directions,
                                       strict=True):  # fmt: skip
                conv.weight.copy_(size * direction)
        (e(masks) * upstream).sum().backward()
        return float(e.weighting.mlp[0].weight.grad.norm())

    ratio = first_layer_gradient(1e-2) / first_layer_gradient(1e-3)
    assert 7 < ratio < 14, ratio  # ~10: first order (second order would be ~100)


def test_content_token_mask_drops_start_end_and_padding(base):
    tokens = base["tokenizer"](["a pale polyp", ""], padding="max_length", max_length=10,
                               return_tensors="pt")  # fmt: skip
    mask = content_token_mask(tokens.attention_mask)
    assert mask[0].tolist() == [False, True, True, True] + [False] * 6
    assert not mask[1].any()


def test_text_scores_properties(base):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 16, 32, generator=g)
    k = torch.randn(2, 12, 32, generator=g)
    content = torch.zeros(2, 12, dtype=torch.bool)
    content[0, 1:5] = True  # prompt 0 has four content tokens, prompt 1 is empty
    keys = torch.zeros(2, 12, dtype=torch.bool)
    keys[0, :6] = True
    keys[1, :2] = True
    s = text_scores(q, k, 4, content, keys)
    assert s.shape == (2, 16) and float(s.min()) >= 0 and float(s.max()) <= 1
    assert float(s[0].min()) == 0.0 and float(s[0].max()) == pytest.approx(1.0)
    assert torch.equal(s[1], torch.zeros(16))  # empty prompt: S = 0
    # Padding keys do not count, whatever they hold and however many there are.
    k2 = torch.cat([k, torch.randn(2, 20, 32, generator=g)], dim=1)
    content2 = torch.cat([content, torch.zeros(2, 20, dtype=torch.bool)], dim=1)
    keys2 = torch.cat([keys, torch.zeros(2, 20, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(text_scores(q, k2, 4, content2, keys2), s)


def test_text_scores_ignore_start_and_end_tokens():
    # Pixel 0 looks only at the start token, pixel 1 only at a content token,
    # pixel 2 only at the end token.
    k = torch.zeros(1, 4, 8)
    k[0, 0, 0] = k[0, 1, 1] = k[0, 3, 2] = 1.0
    q = torch.zeros(1, 3, 8)
    q[0, 0, 0] = q[0, 1, 1] = q[0, 2, 2] = 50.0
    content = torch.tensor([[False, True, True, False]])
    s = text_scores(q, k, 1, content, torch.ones(1, 4, dtype=torch.bool))
    assert s[0].tolist() == pytest.approx([0.0, 1.0, 0.0], abs=1e-4)
    with_ends = text_scores(
        q, k, 1, torch.ones(1, 4, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool)
    )
    assert with_ends[0].tolist() != pytest.approx(s[0].tolist(), abs=1e-2)


def test_scores_and_padding_through_the_model(base):
    branch = _branch(base)
    _perturb_zero_layers(branch)
    branch._branch_context.keep_scores = True
    latents, t, text, masks, attention = _inputs(base, batch=2)
    with torch.no_grad():
        branch(latents, t, text, masks, text_key_mask=attention.bool(), return_dict=False)
    scores = dict(branch._branch_context.last_scores)
    # The same prompts padded to 90 tokens give the same text scores.
    tokens = base["tokenizer"](
        PROMPTS[:2], padding="max_length", max_length=90, return_tensors="pt"
    )
    with torch.no_grad():
        text90 = base["text_encoder"](tokens.input_ids[:, :77])[0]
        text90 = torch.cat([text90, torch.randn(2, 13, text90.shape[-1])], dim=1)
        branch(
            latents, t, text90, masks, text_key_mask=tokens.attention_mask.bool(), return_dict=False
        )
    # The first block sees identical pixels in both runs (later blocks differ, because
    # the plain cross-attention does attend to the extra tokens).
    torch.testing.assert_close(
        branch._branch_context.last_scores[0], scores[0], rtol=1e-4, atol=1e-5
    )
    assert float(scores[0].max()) == pytest.approx(1.0)


def test_gradients_reach_the_new_parts_and_not_the_frozen_base(base):
    branch = _branch(base)
    _perturb_zero_layers(branch)
    latents, t, text, masks, attention = _inputs(base)
    down, mid = branch(latents, t, text, masks, text_key_mask=attention.bool(), return_dict=False)
    pred = base["unet"](latents, t, encoder_hidden_states=text,
                        down_block_additional_residuals=down, mid_block_additional_residual=mid).sample  # fmt: skip
    F.mse_loss(pred, torch.randn_like(pred)).backward()
    grads = dict(branch.named_parameters())
    for name in (
        "taam_lambda",
        "controlnet_cond_embedding.weighting.mlp.0.weight",
        "controlnet_cond_embedding.weighting.mlp.4.weight",
        "controlnet_cond_embedding.conv_in.weight",  # Em
        "controlnet_cond_embedding.blur_embedding.conv_in.weight",  # Em'
        "blur_reinjection.0.weight",
    ):
        grad = grads[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name
    assert all(p.grad is None for p in base["unet"].parameters())
    assert all(p.grad is None for p in base["text_encoder"].parameters())


def test_token_grid():
    assert token_grid(64, (8, 8)) == (8, 8)
    assert token_grid(4, (8, 8)) == (2, 2)
    assert token_grid(24, (7, 11)) == (4, 6)  # ceil division, as diffusers down-samples
    with pytest.raises(ValueError):
        token_grid(7, (8, 8))


def test_pipeline_is_seeded_per_image_and_batched(base):
    pipe = CCISPipeline(controlnet=_branch(base), **base)
    masks = [render_phantom(0, 0, i, 64, 64).mask for i in range(2)]
    both = pipe(PROMPTS[:2], masks, num_inference_steps=3, seed=[5, 6], progress=False)
    alone = pipe(PROMPTS[1], masks[1], num_inference_steps=3, seed=6, progress=False)
    assert both.shape == (2, 64, 64, 3) and both.min() >= 0 and both.max() <= 1
    np.testing.assert_allclose(both[1], alone[0], atol=1e-5)
    images = pipe(PROMPTS[0], masks[0], num_inference_steps=3, output_type="pil", progress=False)
    assert images[0].size == (64, 64)
    with pytest.raises(ValueError, match="2 prompts but 3 masks"):
        pipe(PROMPTS[:2], masks + masks[:1], num_inference_steps=1, progress=False)
    with pytest.raises(ValueError, match="multiple of 8"):
        pipe(PROMPTS[0], np.zeros((60, 64), np.uint8), num_inference_steps=1, progress=False)


def test_pipeline_runs_a_plain_controlnet_too(base):
    plain = ControlNetModel.from_unet(base["unet"], conditioning_channels=1,
                                      conditioning_embedding_out_channels=TINY_CONDITIONING_CHANNELS)  # fmt: skip
    pipe = CCISPipeline(controlnet=plain, **base)
    out = pipe(PROMPTS[0], np.zeros((64, 64), np.uint8), num_inference_steps=2, progress=False)
    assert out.shape == (1, 64, 64, 3)


def test_masks_to_tensor_accepts_common_forms():
    m = render_phantom(0, 0, 0, 64, 64).mask
    from_uint8 = masks_to_tensor([m])
    assert from_uint8.shape == (1, 1, 64, 64) and set(from_uint8.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(masks_to_tensor([m > 0]), from_uint8)
    torch.testing.assert_close(masks_to_tensor(torch.tensor(m / 255.0)), from_uint8)
    assert masks_to_tensor([m], size=(32, 32)).shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="H×W"):
        masks_to_tensor([np.zeros((2, 3, 4))])


def test_sd15_loader_reads_a_diffusers_folder(base, tmp_path):
    from transformers import CLIPTokenizer  # noqa: F401 - the folder keeps our tokenizer

    folder = tmp_path / "sd"
    StableDiffusionPipeline(**base, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder)  # fmt: skip
    loaded = load_sd15(folder)
    assert set(loaded) == {"vae", "text_encoder", "tokenizer", "unet", "scheduler"}
    assert type(loaded["scheduler"]).__name__ == "DDIMScheduler"
    torch.testing.assert_close(loaded["unet"].conv_in.weight, base["unet"].conv_in.weight)
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        load_sd15(tmp_path)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_sd15(tmp_path / "v1-5-pruned.safetensors")


def test_control_works_after_a_short_overfit(base):
    """Train the branch on 4 pairs; generating with a pair's mask versus another mask
    changes the image where the two masks differ, far more than chance."""
    torch.manual_seed(0)
    samples = [render_phantom(1, 0, i, 64, 64) for i in range(4)]
    prompts = ["the polyp is red , round and smooth"] * 4
    vae, encoder, unet, scheduler = (
        base["vae"],
        base["text_encoder"],
        base["unet"],
        base["scheduler"],
    )
    branch = _branch(base)
    images = torch.tensor(np.stack([s.image for s in samples])).permute(0, 3, 1, 2) / 127.5 - 1
    masks = masks_to_tensor([s.mask for s in samples])
    tokens = base["tokenizer"](prompts, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
        text = encoder(tokens.input_ids)[0]
    optimizer = torch.optim.AdamW(branch.parameters(), lr=1e-3)
    for _ in range(250):
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (4,))
        noisy = scheduler.add_noise(latents, noise, t)
        down, mid = branch(noisy, t, text, masks, text_key_mask=tokens.attention_mask.bool(),
                           return_dict=False)  # fmt: skip
        pred = unet(noisy, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample  # fmt: skip
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.6
    pipe = CCISPipeline(controlnet=branch, **base)
    kwargs = {"num_inference_steps": 20, "guidance_scale": 1.0, "seed": [7] * 4, "progress": False}
    own = pipe(prompts, [s.mask for s in samples], **kwargs)
    other = pipe(prompts, [samples[(i + 1) % 4].mask for i in range(4)], **kwargs)

    def dice(a, b):
        return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)

    scores, chances = [], []
    for i in range(4):
        changed = np.abs(own[i] - other[i]).mean(axis=-1)
        differ = (samples[i].mask > 0) ^ (samples[(i + 1) % 4].mask > 0)
        region = changed > np.quantile(changed, 1 - differ.mean())
        rng = np.random.default_rng(i)
        chances.append(
            np.mean([dice(rng.random(differ.shape) < differ.mean(), differ) for _ in range(50)])
        )
        scores.append(dice(region, differ))
    assert np.mean(scores) > 1.5 * np.mean(chances), (scores, chances)


def test_separable_blur_equals_the_2d_gaussian():
    from torchvision.transforms.v2.functional import gaussian_blur

    from ccis.diffusion.bmws import blur_mask

    mask = masks_to_tensor([render_phantom(0, 0, 0, 64, 64).mask])
    sigma = 0.05 * 64
    radius = int(np.ceil(3 * sigma))
    full = gaussian_blur(mask, kernel_size=[2 * radius + 1] * 2, sigma=[sigma, sigma])
    torch.testing.assert_close(blur_mask(mask, 0.05), full, atol=1e-6, rtol=1e-5)
    assert float(blur_mask(mask, 0.05).min()) >= 0 and 0 < float(blur_mask(mask, 0.05).max()) <= 1


def test_mask_embedding_cache_follows_inputs_and_weights(base):
    from PIL import Image

    branch = _branch(base)
    _perturb_zero_layers(branch)
    embedding = branch.controlnet_cond_embedding
    masks = masks_to_tensor([render_phantom(0, 0, 0, 64, 64).mask])
    with torch.no_grad():
        first = embedding(masks)
        assert embedding(masks) is first  # cached while sampling
        embedding.conv_out.weight.add_(0.1)  # as an optimiser step or weight load would
        changed = embedding(masks)
    assert not torch.equal(first, changed)
    with torch.inference_mode():
        embedding(masks)  # inference tensors carry no version counter: no cache, no crash
    pipe = CCISPipeline(controlnet=branch, **base)
    mask = Image.fromarray(render_phantom(0, 0, 1, 64, 64).mask)
    out = pipe(PROMPTS[0], mask, num_inference_steps=2, seed=np.int64(3), progress=False)
    assert out.shape == (1, 64, 64, 3)


@pytest.mark.parametrize("switches", [{}, {"bmws": False, "taam": False}])
def test_mask_encoder_carries_the_mask_at_unit_scale(base, switches):
    # diffusers' default initialisation shrinks a binary mask ~10⁴-fold across the
    # conditioning embedding, and the branch then learns to ignore the mask.
    embedding = _branch(base, **switches).controlnet_cond_embedding
    left = torch.zeros(1, 1, 64, 64)
    left[..., 8:32, 8:32] = 1
    right = left.flip(-1).flip(-2)

    def hidden(mask: torch.Tensor) -> torch.Tensor:
        x = F.silu(embedding.conv_in(mask))
        for block in embedding.blocks:
            x = F.silu(block(x))
        return x

    with torch.no_grad():
        a, b = hidden(left), hidden(right)
    assert (a - b).abs().mean() > 0.5 * a.abs().mean()
    assert embedding.conv_out.weight.abs().max() == 0  # the output still starts at zero
