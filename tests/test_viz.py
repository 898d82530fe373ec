"""Mask and attention pictures: layouts, pixels against fm.build_mask, labels, files, the CLI."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import futuremask as fm  # noqa: E402
from futuremask.attnmap import attention_map  # noqa: E402
from futuremask.checkpoint import sample_inputs  # noqa: E402
from futuremask.cli import main  # noqa: E402
from futuremask.tiny import tiny_llava  # noqa: E402
from futuremask.viz import BLOCKED, CAUSAL, FUTURE, SINK, mask_image, parse_layout, plot_attention, plot_mask  # noqa: E402

POLICIES = ("causal", "future", "future_v2v", "future_v2t", "mma")
TINY = torch.tensor([False, True, True, False])  # the layout "T1 V2 T1"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def tiny():
    return tiny_llava()


def test_parse_layout_runs():
    lay = parse_layout("T4 V16 T6 V16 T8")
    assert lay.length == 50
    assert lay.modality[0].tolist() == [0] * 4 + [1] * 16 + [0] * 6 + [1] * 16 + [0] * 8
    assert parse_layout("t2v3,T1").modality[0].tolist() == [0, 0, 1, 1, 1, 0]
    assert parse_layout("T1 W2").modality[0].tolist() == [0, 2, 2]  # W = video
    for bad in ("", "T4 X3", "T V4", "4T", "T0"):
        with pytest.raises(ValueError, match="layout"):
            parse_layout(bad)


@pytest.mark.parametrize("policy", POLICIES)
def test_mask_image_one_pixel_per_cell_matches_build_mask(policy):
    img = mask_image(policy, "T1 V2 T1")
    allowed = fm.build_mask(policy, TINY)[0].numpy()
    causal = np.tril(np.ones((4, 4), dtype=bool))
    assert img.shape == (4, 4, 3)
    for i in range(4):
        for j in range(4):
            want = CAUSAL if j <= i else (FUTURE if allowed[i, j] else BLOCKED)
            assert tuple(img[i, j]) == pytest.approx(want), (policy, i, j)
    assert np.array_equal((img != np.array(BLOCKED)).any(-1), allowed | causal)


def test_mask_image_hand_worked_v2v_and_merge():
    # future_v2v on T V V T: the two visual rows see both visual keys, nothing else is added.
    img = mask_image("future_v2v", "T1 V2 T1")
    future_cells = {(i, j) for i in range(4) for j in range(4) if tuple(img[i, j]) == pytest.approx(FUTURE)}
    assert future_cells == {(1, 2)}
    merge = mask_image("merge", "T1 V2 T1", merge_policy="future")
    sink_cells = {(i, j) for i in range(4) for j in range(4) if tuple(merge[i, j]) == pytest.approx(SINK)}
    assert sink_cells == {(1, 0), (2, 0)}  # visual rows 1 and 2 have future; row 0 is text, row 3 text
    assert (merge[np.triu_indices(4, 1)] == np.array(BLOCKED)).all()  # no future cell is attended


def test_plot_mask_png_cell_centres_match_build_mask(tmp_path):
    out = tmp_path / "tiny.png"
    fig = plot_mask("T1 V2 T1", POLICIES, output=out, dpi=100)
    width, height = (fig.get_size_inches() * fig.dpi).round().astype(int)
    png = np.asarray(Image.open(out).convert("RGB")).astype(float) / 255
    assert png.shape == (height, width, 3)
    for ax, policy in zip(fig.axes, POLICIES, strict=True):
        allowed = fm.build_mask(policy, TINY)[0].numpy()
        for i in range(4):
            for j in range(4):
                x, y = ax.transData.transform((j, i))  # cell centre in display pixels, origin bottom-left
                pixel = png[int(round(height - y)), int(round(x))]
                want = CAUSAL if j <= i else (FUTURE if allowed[i, j] else BLOCKED)
                assert np.abs(pixel - np.array(want)).max() < 0.02, (policy, i, j, pixel)


def test_plot_mask_labels_titles_and_sizes(tmp_path):
    fig = plot_mask("T4 V16 T6 V16 T8", output=tmp_path / "m.svg", panel_size=3.0, dpi=100)
    assert len(fig.axes) == 6
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "causal" and titles[1].startswith("future ") and titles[4].startswith("mma")
    assert titles[5].startswith("merge")
    expected = ["text 4", "image 16", "text 6", "image 16", "text 8"]
    centres = [1.5, 11.5, 22.5, 33.5, 45.5]
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == expected
        assert [t.get_text() for t in ax.get_yticklabels()] == expected
        assert list(ax.get_xticks()) == pytest.approx(centres)
        assert ax.get_xlabel() == "key j" and ax.get_ylabel() == "query i"
        assert ax.get_images()[0].get_array().shape == (50, 50, 3)
    assert tuple(fig.get_size_inches()) == pytest.approx((18.0, 4.3))
    svg = (tmp_path / "m.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg


def test_plot_mask_accepts_layouts_and_rejects_bad_names(tmp_path):
    fig = plot_mask(TINY, ["original", "future_v2t"])  # alias, and a bool is_visual vector
    assert [ax.get_title() for ax in fig.axes] == ["causal", "future_v2t  (M^v2t)"]
    padded = fm.TokenLayout.from_masks(torch.tensor([[0, 1, 1, 0]]).bool(), attention_mask=torch.tensor([[0, 1, 1, 1]]))
    img = mask_image("future", padded)
    assert np.all(img[:, 0] != np.array(BLOCKED))  # the padding column is drawn grey, not white
    with pytest.raises(ValueError, match="unknown mask policy"):
        plot_mask("T2 V2", ["nope"])
    with pytest.raises(ValueError, match=r"\.png, \.svg or \.pdf"):
        plot_mask("T2 V2", ["causal"], output=tmp_path / "m.jpg")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_show_mask_cli(tmp_path, capsys):
    out = tmp_path / "masks.png"
    assert main(["show-mask", "--layout", "T2 V3 T1", "--policy", "causal", "mma", "merge", "--output", str(out)]) == 0
    assert "6 tokens (text 2, image 3, text 1)" in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.size == (round(3 * 3.2 * 110), round((3.2 + 1.3) * 110))
    assert main(["show-mask", "--prompt", "hi", "--output", str(out)]) == 2  # --prompt needs --model


def test_show_mask_cli_real_prompt(tmp_path, capsys, tiny):
    model, processor = tiny
    processor.save_pretrained(tmp_path / "ckpt")
    model.config.save_pretrained(tmp_path / "ckpt")
    Image.new("RGB", (40, 40), "blue").save(tmp_path / "a.png")
    out = tmp_path / "real.png"
    args = ["show-mask", "--model", str(tmp_path / "ckpt"), "--image", str(tmp_path / "a.png"), "--prompt",
            "what color ?", "--output", str(out)]
    assert main(args) == 0
    # "USER: <image> what color ? ASSISTANT:" -> 1 text token, 16 image tokens, 4 text tokens
    assert "21 tokens (text 1, image 16, text 4)" in capsys.readouterr().out
    assert out.stat().st_size > 10_000
    model.save_pretrained(tmp_path / "ckpt")
    amap = tmp_path / "attn.svg"
    args = ["attention-map", "--model", str(tmp_path / "ckpt"), "--policy", "mma", "--head", "0", "--output", str(amap)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "built-in" not in captured.err and captured.out.splitlines()[2].split()[0] == "mma"
    assert "<svg" in amap.read_text()


def _eager_weights(model, inputs, policy, layer):
    got = {}
    attn = model.model.language_model.layers[layer].self_attn
    hook = attn.register_forward_hook(lambda mod, args, out: got.__setitem__("w", out[1]))
    with fm.apply(model, policy, backend="eager"), torch.no_grad():
        model(**inputs, use_cache=False)
    hook.remove()
    return got["w"][0]  # [H, L, L]


@pytest.mark.parametrize("policy", ["causal", "future", "mma"])
def test_attention_map_matches_eager_weights(tiny, policy):
    model, processor = tiny
    inputs = sample_inputs(processor)
    for layer in (0, 1):
        eager = _eager_weights(model, inputs, policy, layer)
        mean = attention_map(model, inputs, policy, layer=layer)
        head = attention_map(model, inputs, policy, layer=layer, head=3, chunk_bytes=1)  # one row per chunk
        assert torch.allclose(mean.weights, eager.mean(0), atol=1e-6)
        assert torch.allclose(head.weights, eager[3], atol=1e-6)
    visual = mean.layout.visual[0]
    if policy == "causal":
        assert mean.future_mass.abs().max() == 0
    elif policy == "future":  # every visual row has later prompt tokens; text rows stay causal
        assert mean.future_mass[visual].min() > 0 and mean.future_mass[~visual].abs().max() == 0
    else:  # mma: the text row before the image sees it; text rows after it have no later visual token
        assert mean.future_mass[0] > 0 and mean.future_mass[~visual][1:].abs().max() == 0


def test_attention_map_merge_weights(tiny):
    model, processor = tiny
    inputs = sample_inputs(processor)
    causal = attention_map(model, inputs, "causal", layer=0, head=1).weights
    full = attention_map(model, inputs, "future", layer=0, head=1).weights
    lse = attention_map(model, inputs, "future", merge=fm.Merge(kind="lse"), layer=0, head=1)
    kernel = attention_map(model, inputs, "future", merge="kernel", layer=0, head=1)
    past = torch.ones_like(full).tril().bool()
    past[:, 0] = False
    # lse: past keys keep their full-mask weights, the sink holds its own weight plus all the future's
    assert torch.allclose(lse.weights[past], full[past], atol=1e-6)
    assert torch.allclose(lse.weights[:, 0], full[:, 0] + full.triu(1).sum(-1), atol=1e-6)
    # kernel: only the sink logit moves, so the other past keys keep their causal proportions
    ratio = (1 - kernel.weights[:, :1]) / (1 - causal[:, :1]).clamp(min=1e-12)
    assert torch.allclose(kernel.weights[past], (causal * ratio)[past], atol=1e-6)
    assert kernel.future_mass.abs().max() == 0 and lse.future_mass.abs().max() == 0
    visual = kernel.layout.visual[0]
    assert not torch.allclose(kernel.sink_mass[visual], causal[visual, 0])
    assert torch.allclose(kernel.sink_mass[~visual], causal[~visual, 0], atol=1e-6)  # text rows have no future


def test_attention_map_rejects_bad_layer_and_head(tiny):
    model, processor = tiny
    inputs = sample_inputs(processor)
    with pytest.raises(ValueError, match="layer 5 does not exist"):
        attention_map(model, inputs, "future", layer=5)
    with pytest.raises(ValueError, match="head 4 does not exist"):
        attention_map(model, inputs, "future", head=4)
    assert getattr(model, "_futuremask", None) is None  # the handle was removed on the way out


def test_plot_attention_and_cli(tiny, tmp_path, capsys):
    model, processor = tiny
    inputs = sample_inputs(processor)
    maps = [attention_map(model, inputs, "causal"), attention_map(model, inputs, "future", merge="kernel")]
    fig = plot_attention(maps, output=tmp_path / "a.png")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["causal — layer 1, mean of heads", "future + merge(kernel) — layer 1, mean of heads"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["text 1", "image 16", "text 10"]
    out = tmp_path / "cli.png"
    assert main(["attention-map", "--policy", "causal", "future+lse", "--layer", "0", "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert "built-in random-weight tiny LLaVA" in captured.err
    lines = captured.out.splitlines()
    assert lines[2].split()[:2] == ["causal", "0.000"] and lines[3].split()[:2] == ["future+lse", "0.000"]
    assert out.stat().st_size > 10_000
    assert main(["attention-map", "--policy", "a", "b", "c", "--output", str(out)]) == 2


@pytest.mark.parametrize("family", ["llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3", "gemma3", "internvl"])
def test_attention_map_matches_eager_weights_on_every_family(family):
    from families import FAMILIES, IMAGE, build_inputs

    vlm = FAMILIES[family]()
    inputs = build_inputs(vlm, ["the", IMAGE, "color is the"])
    amap = attention_map(vlm.model, inputs, "future", layer=-1)
    names = [n for n, _ in vlm.model.named_modules() if n.endswith(f"layers.{amap.layer}.self_attn") and "vision" not in n]
    assert len(names) == 1
    got = {}
    hook = vlm.model.get_submodule(names[0]).register_forward_hook(lambda mod, args, out: got.__setitem__("w", out[1]))
    with fm.apply(vlm.model, "future", backend="eager"), torch.no_grad():
        vlm.model(**inputs, use_cache=False)
    hook.remove()
    assert torch.allclose(amap.weights, got["w"][0].float().mean(0), atol=1e-6)
    assert amap.future_mass[amap.layout.visual[0]].min() > 0
