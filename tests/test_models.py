"""The R² model: shapes, masking, parameter count, official weight loading."""

import pytest
import torch

from vtg_pipeline.models import ModelConfig, create_model, r2_block
from vtg_pipeline.models.layers import PatchLayout
from vtg_pipeline.models.official import load_official_r2, official_to_ours


def batch(b=2, t=20, k=4, p=5, dv=16, words=6, dt=12, lengths=(20, 13), query_lengths=(6, 3)):
    video = torch.randn(b, t, k, p, dv)
    query = torch.randn(b, words, k, dt)
    video_mask = torch.arange(t)[None] < torch.tensor(lengths)[:, None]
    query_mask = torch.arange(words)[None] < torch.tensor(query_lengths)[:, None]
    return video, video_mask, query, query_mask


def small(**kw):
    return create_model(ModelConfig(vision_width=16, text_width=12, dims=32, heads=4, **kw)).eval()


def test_output_shapes():
    model = small()
    out = model(*batch())
    n = 20 + 10 + 5 + 2
    assert out["cls"].shape == (2, n) and out["reg"].shape == (2, n, 2) and out["points"].shape == (n, 4)
    assert out["saliency"].shape == (2, 20) and out["query"].shape == (2, 32)
    assert len(out["cls_tokens"]) == 4 and out["cls_tokens"][0].shape == (2, 20, 32)
    assert (out["reg"] > 0).all()


def test_padding_does_not_change_a_sample():
    """A video padded inside a batch gives the same outputs as alone (true-length TEF and positions, masked max)."""
    torch.manual_seed(0)
    model = small()
    video, video_mask, query, query_mask = batch()
    together = model(video, video_mask, query, query_mask)
    alone = model(video[1:, :13], video_mask[1:, :13], query[1:, :3], query_mask[1:, :3])
    torch.testing.assert_close(together["frames"][1, :13], alone["frames"][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(together["saliency"][1, :13], alone["saliency"][0], rtol=1e-4, atol=1e-5)
    keep = together["complete_points"][1]
    torch.testing.assert_close(together["cls"][1][keep], alone["cls"][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(together["reg"][1][keep], alone["reg"][0], rtol=1e-4, atol=1e-5)


def test_one_video_shared_by_a_batch_of_queries_equals_repeating_it():
    """Grounding many queries on one video: video (1, ...) broadcasts over B queries."""
    torch.manual_seed(0)
    model = small()
    video, _, query, query_mask = batch(b=3, lengths=(20, 20, 20), query_lengths=(6, 2, 4))
    video_mask = torch.ones(3, 20, dtype=torch.bool)
    shared = model(video[:1], video_mask, query, query_mask)
    repeated = model(video[:1].expand(3, -1, -1, -1, -1), video_mask, query, query_mask)
    for key in ("cls", "reg", "saliency", "frames"):
        torch.testing.assert_close(shared[key], repeated[key], rtol=1e-4, atol=1e-5)


def test_videos_shared_by_some_queries_of_a_batch_give_the_loss_and_gradients_of_repeating_them():
    """Training with video_index: 5 queries on 2 videos (one padded, queries in mixed order) map each video once,
    yet give the loss and gradients of the 5 videos repeated, one per query (dropout off: the same masks)."""
    video, _, query, query_mask = batch(b=5, lengths=(20,) * 5, query_lengths=(6, 2, 4, 5, 1))
    video = video[:2]
    video_index = torch.tensor([1, 0, 1, 1, 0])
    video_mask = torch.arange(20)[None] < torch.tensor([13, 20])[video_index][:, None]
    negative, negative_mask = batch(b=5, query_lengths=(3, 6, 2, 2, 4))[2:]
    results = []
    for inputs in ((video, video_index), (video[video_index], None)):
        torch.manual_seed(0)
        model = small(background_matching=True, dropout=0.0, droppath=0.0).train()
        out = model(inputs[0], video_mask, query, query_mask, negative, negative_mask, video_index=inputs[1])
        loss = sum(out[key].square().sum() for key in ("saliency", "cls", "reg", "frame_prob")) + sum(c.sum() for c in out["cls_tokens"])
        loss.backward()
        results.append((loss, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}))
    (grouped, grouped_grads), (repeated, repeated_grads) = results
    torch.testing.assert_close(grouped, repeated, rtol=1e-5, atol=1e-5)
    assert grouped_grads.keys() == repeated_grads.keys() and len(grouped_grads) > 40
    for name in grouped_grads:
        torch.testing.assert_close(grouped_grads[name], repeated_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_default_parameter_count_matches_official():
    """The grounding model has the official count; the library search head comes on top."""
    model = create_model(ModelConfig())
    grounding = [p for name, p in model.named_parameters() if not name.startswith("retrieval.")]
    assert sum(p.numel() for p in grounding) == 2_836_242
    assert sum(p.numel() for p in model.retrieval.parameters()) > 0


def official_state_dict():
    """Every name and shape of the official R2-Tuning ViT-B/32 checkpoint, with distinct values."""
    shapes = {"coef": (4,), "adapter.gate": (3,), "adapter.scale": (4,), "pooling.att.weight": (1, 256), "loss._loss_sal.scale": ()}
    for name, width in (("video_map", 770), ("query_map", 512)):
        shapes |= {
            f"adapter.{name}.0.weight": (width,),
            f"adapter.{name}.0.bias": (width,),
            f"adapter.{name}.2.weight": (256, width),
            f"adapter.{name}.2.bias": (256,),
            f"adapter.{name}.4.weight": (256,),
            f"adapter.{name}.4.bias": (256,),
            f"adapter.{name}.6.weight": (256, 256),
            f"adapter.{name}.6.bias": (256,),
        }
    for name in ("v_map", "q_map"):
        shapes |= {f"adapter.{name}.weight": (256, 256), f"adapter.{name}.bias": (256,)}
    for att in ("cross_att", "self_att"):
        for proj in "qkvm":
            shapes |= {f"adapter.tem.{att}.{proj}.weight": (256, 256), f"adapter.tem.{att}.{proj}.bias": (256,)}
    for norm in ("cross_att_norm", "self_att_norm", "ffn_norm"):
        shapes |= {f"adapter.tem.{norm}.weight": (256,), f"adapter.tem.{norm}.bias": (256,)}
    shapes |= {
        "adapter.tem.ffn.mapping.0.weight": (1024, 256),
        "adapter.tem.ffn.mapping.0.bias": (1024,),
        "adapter.tem.ffn.mapping.2.weight": (256, 1024),
        "adapter.tem.ffn.mapping.2.bias": (256,),
    }
    for level in (1, 2, 3):
        for unit in range(level):
            shapes |= {
                f"pyramid.blocks.{level}.{5 * unit + 1}.weight": (256, 256, 2),
                f"pyramid.blocks.{level}.{5 * unit + 1}.bias": (256,),
                f"pyramid.blocks.{level}.{5 * unit + 3}.weight": (256,),
                f"pyramid.blocks.{level}.{5 * unit + 3}.bias": (256,),
            }
    for head, out in (("class_head", 1), ("coord_head", 2)):
        shapes |= {
            f"{head}.module.1.weight": (256, 256, 3),
            f"{head}.module.1.bias": (256,),
            f"{head}.module.3.weight": (out, 256, 3),
            f"{head}.module.3.bias": (out,),
        }
    return {name: torch.full(shape, float(i)) for i, (name, shape) in enumerate(sorted(shapes.items()))}


def test_official_checkpoint_lands_tensor_by_tensor(tmp_path):
    state = official_state_dict()
    assert len(state) == 83
    path = tmp_path / "r2_tuning_qvhighlights.pth"
    torch.save({"state_dict": state, "meta": {"epoch": 30}}, path)
    model = load_official_r2(str(path))
    ours = model.state_dict()
    for name, tensor in state.items():
        target = official_to_ours(name)
        if target is None:
            continue
        torch.testing.assert_close(ours[target], tensor, msg=f"{name} -> {target}")
    assert len([name for name in ours if not name.startswith("retrieval.")]) == 82


def test_retrieval_head_gives_unit_embeddings_that_ignore_padding():
    """Library search's stage 1: a window's embedding depends on its valid frames only, a query's on its tokens only."""
    torch.manual_seed(0)
    head = small().retrieval
    video, video_mask, query, query_mask = batch()
    windows = head.embed_windows(video[:, :, -1, :1], video_mask)
    queries = head.embed_queries(query, query_mask)
    assert windows.shape == queries.shape == (2, ModelConfig().retrieval_dims)
    torch.testing.assert_close(torch.cat((windows, queries)).norm(dim=1), torch.ones(4))
    torch.testing.assert_close(head.embed_windows(video[1:, :13, -1, :1], video_mask[1:, :13])[0], windows[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(head.embed_queries(query[1:, :3], query_mask[1:, :3])[0], queries[1], rtol=1e-4, atol=1e-5)


def test_retrieval_motion_starts_as_the_plain_head_then_reads_frame_order_and_ignores_padding():
    """``model.retrieval_motion``: the same weights and embeddings at the start (the convolution is zero); trained, a
    window's embedding depends on the order of its frames (the max alone does not), still not on padding, and
    ``embed_grid`` (one video's windows, cut at its end) gives ``embed_windows``' numbers."""
    torch.manual_seed(0)
    plain = small().retrieval
    torch.manual_seed(0)
    head = small(retrieval_motion=True).retrieval
    video, video_mask, _, _ = batch()
    cls = video[:, :, -1, :1]
    torch.testing.assert_close(head.embed_windows(cls, video_mask), plain.embed_windows(cls, video_mask))
    with torch.no_grad():
        head.motion.weight.normal_(std=0.1)
    reversed_cls = cls[:1, :20].flip(1)
    full = torch.ones(1, 20, dtype=torch.bool)
    torch.testing.assert_close(plain.embed_windows(reversed_cls, full), plain.embed_windows(cls[:1], full))
    assert (head.embed_windows(reversed_cls, full) - head.embed_windows(cls[:1], full)).abs().amax() > 1e-3
    windows = head.embed_windows(cls, video_mask)
    torch.testing.assert_close(head.embed_windows(cls[1:, :13], video_mask[1:, :13])[0], windows[1], rtol=1e-4, atol=1e-5)
    starts = [0, 6, 12, 18]  # the last window is cut at frame 20
    alone = torch.cat(
        [head.embed_windows(cls[:1, s : s + 6], torch.ones(1, len(range(s, min(s + 6, 20))), dtype=torch.bool)) for s in starts]
    )
    torch.testing.assert_close(head.embed_grid(cls[0], starts, 6), alone, rtol=1e-4, atol=1e-5)


def test_retrieval_layout_starts_as_the_plain_head_then_reads_where_things_are_in_the_frame():
    """``model.retrieval_layout``: the same weights and embeddings at the start (the layout's last Linear is zero) while
    it reads every token; trained, a window's embedding changes when the patches move within their frames (the plain
    head reads the CLS state alone), still not with padding, and ``embed_grid`` gives ``embed_windows``' numbers."""
    torch.manual_seed(0)
    plain = small().retrieval
    torch.manual_seed(0)
    head = small(retrieval_layout=2).retrieval
    assert plain.tokens_read == slice(0, 1) and head.tokens_read == slice(None)
    assert not plain.reads_patches and head.reads_patches
    video, video_mask, _, _ = batch()  # 5 tokens a frame: CLS and a 2 x 2 grid
    states = video[:, :, -1]
    torch.testing.assert_close(head.embed_windows(states, video_mask), plain.embed_windows(states[:, :, :1], video_mask))
    with torch.no_grad():
        head.layout.out.weight.normal_(std=0.5)
    moved = torch.cat((states[:, :, :1], states[:, :, 1:].roll(1, dims=2)), dim=2)  # the same patches, elsewhere
    assert (head.embed_windows(moved, video_mask) - head.embed_windows(states, video_mask)).abs().amax() > 1e-3
    windows = head.embed_windows(states, video_mask)
    torch.testing.assert_close(head.embed_windows(states[1:, :13], video_mask[1:, :13])[0], windows[1], rtol=1e-4, atol=1e-5)
    starts = [0, 6, 12, 18]
    alone = torch.cat(
        [head.embed_windows(states[:1, s : s + 6], torch.ones(1, len(range(s, min(s + 6, 20))), dtype=torch.bool)) for s in starts]
    )
    torch.testing.assert_close(head.embed_grid(states[0], starts, 6), alone, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="square grid"):
        head.embed_windows(states[:, :, :4], video_mask)  # 3 patches
    assert PatchLayout(16, 32, 4)(torch.randn(1, 3, 50, 16)).shape == (1, 3, 32)  # ViT-B/32's 7 x 7 patches -> 4 x 4 cells
    assert PatchLayout(16, 32, 2)(torch.randn(0, 3, 5, 16)).shape == (0, 3, 32)  # no windows at all (R² window items)
    with pytest.raises(ValueError, match="retrieval_layout"):
        small(retrieval_layout=2, spatial_pooling=False)


def papers_pooling(block, video_step, tef, query, query_mask, step):
    """Spatial pooling exactly as the paper writes it: every token mapped, v_map over all of them."""
    v = block.video_map(torch.cat((video_step, tef), dim=-1))
    q = block.query_map(query)
    logits = torch.einsum("blc,btpc->btlp", block.q_map(q), block.v_map(v)) / block.dims**0.5
    attended = torch.einsum("btlp,btpc->btlc", logits.softmax(-1), v) + q[:, None]
    pooled = attended.masked_fill(~query_mask[:, None, :, None], float("-inf")).amax(dim=2)
    return v[:, :, 0] + pooled * block.scale[step].tanh()


def test_spatial_pooling_equals_the_papers_formula():
    """R2Block.pool_frames never maps every token through the last Linear and v_map, yet gives the same pooled frames."""
    torch.manual_seed(0)
    block = small().r2
    with torch.no_grad():
        for parameter in block.parameters():  # away from the zero-initialised scale and biases
            parameter.add_(torch.randn_like(parameter) * 0.1)
    video, video_mask, query, query_mask = batch()
    tef = r2_block.temporal_endpoints(video_mask.sum(1), 20)[:, :, None, :].expand(2, 20, 5, 2)
    for step in range(4):
        hidden = block.hidden_tokens(video[:, :, step], tef)
        videos = r2_block.QueryVideos(None, 2, 2, video.device)
        ours = block.pool_frames(hidden, block.video_map[-1](hidden[:, :, 0]), block.query_map(query[:, :, step]), query_mask, step, videos)
        torch.testing.assert_close(
            ours, papers_pooling(block, video[:, :, step], tef, query[:, :, step], query_mask, step), rtol=1e-5, atol=1e-6
        )


def saving_step(video, video_mask, query, query_mask, saving: bool, dropout: float):
    torch.manual_seed(0)
    model = small(dropout=dropout, droppath=0.1).train()
    model.r2.memory_saving = saving
    torch.manual_seed(1)
    out = model(video.half(), video_mask, query, query_mask)  # states as the store keeps them: half, mapped in float
    loss = out["saliency"].square().sum() + out["cls"].sum() + out["reg"].sum()
    loss.backward()
    return loss, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def test_memory_saving_gives_the_same_loss_and_gradients_bit_for_bit():
    """optim.memory_saving recomputes activations in backward with the same dropout masks: nothing changes but memory."""
    inputs = batch(t=20)
    assert 20 > r2_block.MAPPED_FRAMES, "the video is mapped in several parts"
    (loss, grads), (saved_loss, saved_grads) = (saving_step(*inputs, saving, dropout=0.5) for saving in (False, True))
    assert torch.equal(loss, saved_loss) and grads.keys() == saved_grads.keys() and len(grads) > 40
    assert all(torch.equal(grads[name], saved_grads[name]) for name in grads)


def test_token_dropout_keeps_the_right_fraction_scales_exactly_and_is_the_identity_when_off():
    from vtg_pipeline.models.layers import TokenDropout

    x = torch.ones(400, 1000, requires_grad=True)
    for p in (0.1, 0.5, 0.9):
        drop = TokenDropout(p).train()
        y = drop(x)
        kept = y != 0
        assert abs(kept.float().mean().item() - (1 - p)) < 0.005  # 400k draws: 5 standard deviations at most ~0.004
        assert torch.equal(y[kept], torch.full_like(y[kept], 65536 / round((1 - p) * 65536)))  # E[y] = x
        y.sum().backward()
        assert torch.equal(x.grad, y.detach())  # gradient through the kept entries only, with the same scale
        x.grad = None
    state = torch.get_rng_state()
    assert TokenDropout(0.5).eval()(x) is x and TokenDropout(0.0).train()(x) is x
    assert torch.equal(torch.get_rng_state(), state)  # off: no random numbers drawn (seeded runs stay as they were)
    torch.manual_seed(3)
    first = TokenDropout(0.5).train()(x)
    torch.manual_seed(3)
    assert torch.equal(first, TokenDropout(0.5).train()(x))  # masks follow torch's seed
