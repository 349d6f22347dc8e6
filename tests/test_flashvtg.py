"""FlashVTG options: adaptive score refinement and the clip-aware score loss."""

import pytest
import torch

from vtg_pipeline.losses import LossConfig, clip_aware_score_loss, grounding_losses
from vtg_pipeline.models import ModelConfig, create_model
from vtg_pipeline.models.heads import ScoreRefinement


def levels_and_masks():
    torch.manual_seed(0)
    levels = [torch.randn(2, 8, 16), torch.randn(2, 4, 16), torch.randn(2, 2, 16)]
    masks = [torch.ones(2, 8, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool), torch.ones(2, 2, dtype=torch.bool)]
    masks[0][1, 6:] = False
    return levels, masks


def test_score_refinement_mixes_within_and_cross_level_scores_with_x_in_0_1():
    levels, masks = levels_and_masks()
    asr = ScoreRefinement(16, kernel_size=5)
    within = torch.cat([asr.score(asr.within, x, m) for x, m in zip(levels, masks)], 1)
    cross = asr.score(asr.cross, torch.cat(levels, 1), torch.cat(masks, 1))
    assert asr(levels, masks).shape == (2, 14) and asr.weight.item() == 0.5
    with torch.no_grad():
        asr.mix.fill_(60.0)
        assert 0.0 <= asr.weight.item() <= 1.0 and torch.allclose(asr(levels, masks), within)
        asr.mix.fill_(-60.0)
        assert 0.0 <= asr.weight.item() <= 1.0 and torch.allclose(asr(levels, masks), cross)


def test_cross_level_scorer_sees_the_next_scale_within_level_scorer_does_not():
    levels, masks = levels_and_masks()
    asr = ScoreRefinement(16, kernel_size=5)
    changed = [levels[0], levels[1].clone(), levels[2]]
    changed[1][:, 0] += 3.0  # the first stride-2 point, right after the last stride-1 point in the concatenation
    within = lambda ls: torch.cat([asr.score(asr.within, x, m) for x, m in zip(ls, masks)], 1)  # noqa: E731
    cross = lambda ls: asr.score(asr.cross, torch.cat(ls, 1), torch.cat(masks, 1))  # noqa: E731
    assert torch.equal(within(levels)[0, :8], within(changed)[0, :8])
    assert not torch.allclose(cross(levels)[0, 6:8], cross(changed)[0, 6:8])


def test_clip_aware_loss_hand_values_and_padding():
    mask = torch.tensor([[True, True, True, False]])
    saliency = torch.tensor([[0.0, 0.5, 1.0, 9.0]])
    assert clip_aware_score_loss(torch.tensor([[0.0, 1.0, 2.0, -5.0]]), saliency, mask).item() == pytest.approx(0.0, abs=1e-5)
    # normalised logits [0, 1, 0.5] against [0, 0.5, 1]: squared errors 0, 0.25, 0.25 over 3 valid clips
    assert clip_aware_score_loss(torch.tensor([[0.0, 2.0, 1.0, 100.0]]), saliency, mask).item() == pytest.approx(0.5 / 3, rel=1e-4)


def test_refined_model_trains_with_the_clip_aware_loss():
    torch.manual_seed(0)
    model = create_model(ModelConfig(vision_width=16, text_width=16, dims=32, heads=4, dropout=0.0, droppath=0.0, score_refinement=True))
    assert not hasattr(model, "cls_head")  # replaced, not left unused
    video, mask = torch.randn(2, 16, 4, 5, 16), torch.ones(2, 16, dtype=torch.bool)
    query, query_mask = torch.randn(2, 6, 4, 16), torch.ones(2, 6, dtype=torch.bool)
    out = model(video, mask, query, query_mask)
    saliency = torch.zeros(2, 16)
    saliency[:, 4:8] = 1.0
    losses = grounding_losses(
        out,
        [torch.tensor([[8.0, 16.0]])] * 2,
        torch.full((2,), 0.5),
        saliency,
        mask,
        torch.tensor([5, 6]),
        LossConfig(clip_aware=4.0, saliency_hinge=1.0, saliency_rank=1.0),
    )
    assert losses["clip_aware"].item() > 0 and {"saliency_hinge", "saliency_rank"} <= set(losses)
    sum(losses.values()).backward()
    assert model.score_refinement.mix.grad is not None


def test_adaptive_cross_attention_discards_attention_on_dummies():
    from vtg_pipeline.models.layers import DummyCrossAttention

    torch.manual_seed(0)
    layer = DummyCrossAttention(16, heads=2, dummies=4)
    frames, words = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    out = layer(frames, words, words, mask)
    assert out.shape == (2, 5, 16)
    # by hand: softmax over [words; query-aware dummies], values of the words only
    attn = layer.attn
    keep = torch.cat((mask, mask.new_ones(2, 4)), 1)
    dummies = layer.dummy_encoder(torch.cat((words, layer.dummies.expand(2, -1, -1)), 1), mask=keep)[:, 3:]
    q, k = attn._split(attn.q(frames)), attn._split(attn.k(torch.cat((words, dummies), 1)))
    weights = (q @ k.transpose(-1, -2) / 8**0.5).masked_fill(~keep[:, None, None], float("-inf")).softmax(-1)
    expected = attn.out((weights[..., :3] @ attn._split(attn.v(words))).transpose(1, 2).flatten(2))
    assert torch.allclose(out, expected, atol=1e-5)
    assert (weights[..., :3].sum(-1) < 1).all()  # part of every frame's attention went to the dummies and was dropped
    changed = words.clone()
    changed[1, 2] += 10.0  # a padded word changes nothing
    assert torch.allclose(layer(frames, changed, changed, mask)[1], out[1], atol=1e-5)


def test_dummy_fusion_is_a_model_option():
    model = create_model(ModelConfig(vision_width=16, text_width=16, dims=32, heads=4, fusion="dummy", dummies=6))
    assert model.r2.temporal.cross_attn.dummies.shape == (6, 32)
    out = model(
        torch.randn(1, 8, 4, 5, 16), torch.ones(1, 8, dtype=torch.bool), torch.randn(1, 5, 4, 16), torch.ones(1, 5, dtype=torch.bool)
    )
    assert out["cls"].shape[0] == 1
    with pytest.raises(ValueError, match="model.fusion"):
        create_model(ModelConfig(fusion="gated"))


def test_pyramid_only_options_refuse_the_decoder_head():
    with pytest.raises(ValueError, match="score_refinement .* needs model.head=pyramid"):
        create_model(ModelConfig(vision_width=16, text_width=16, dims=32, heads=4, head="decoder", score_refinement=True))
    decoder = create_model(
        ModelConfig(vision_width=16, text_width=16, dims=32, heads=4, head="decoder", decoder_layers=1, decoder_ffn_dims=32)
    )
    mask = torch.ones(1, 8, dtype=torch.bool)
    out = decoder(torch.randn(1, 8, 4, 5, 16), mask, torch.randn(1, 5, 4, 16), torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="clip_aware needs the pyramid"):
        grounding_losses(
            out, [torch.tensor([[2.0, 6.0]])], torch.tensor([0.5]), torch.ones(1, 8), mask, torch.tensor([2]), LossConfig(clip_aware=4.0)
        )


def test_saliency_hinge_and_rank_contrastive_losses():
    import math

    from vtg_pipeline.losses import rank_contrastive_loss

    scores = torch.tensor([[2.0, 1.0, 0.0, 5.0]])
    saliency = torch.tensor([[1.0, 0.5, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    # levels 0.5 and 1.0, temperature 1: log-softmax over the 3 valid clips
    z = math.log(math.exp(2) + math.exp(1) + 1)
    level_low = -((2 - z) + (1 - z)) / 2  # clips 0 and 1 have label >= 0.5
    level_high = -(2 - z)  # only clip 0 has label >= 1
    assert rank_contrastive_loss(scores, saliency, mask, temperature=1.0).item() == pytest.approx((level_low + level_high) / 2, rel=1e-5)
    out = {"saliency": torch.tensor([[0.3, 0.3, 0.2, 0.9]])}
    assert rank_contrastive_loss(out["saliency"], torch.zeros(1, 4), mask).item() == 0.0  # no salient clip: nothing to rank
    from vtg_pipeline.losses import intra_window_loss

    assert intra_window_loss(out["saliency"], saliency > 0, mask, 0.2).item() == pytest.approx(
        0.2 - 0.3 + 0.2
    )  # clip 2 is the only non-salient one
