"""futuremask on each VLM family of :data:`families.FAMILIES` (docs/models.md), images and videos.

Every check compares the model under ``fm.apply`` with an independent computation: the untouched
model, or the untouched model given a dense boolean mask written here from DESIGN §3's table
(plus Gemma3's own image-bidirectional blocks), followed by a hand-written greedy decode loop.
"""

from __future__ import annotations

import pytest
import torch
from families import (
    FAMILIES,
    IMAGE,
    PREFIX_LM_FAMILIES,
    VIDEO,
    VIDEO_FAMILIES,
    TinyVLM,
    build_batch,
    build_inputs,
)

import futuremask as fm
from futuremask.layout import TokenLayout

FUTURE_POLICIES = ("future", "future_v2v", "future_v2t", "mma")
IMAGE_PROMPT = ["USER:", IMAGE, "what is left of", IMAGE, "the red circle ? ASSISTANT:"]
ONE_IMAGE_PROMPT = ["USER:", IMAGE, "what color is the circle ? ASSISTANT:"]
TEXT_PROMPT = ["USER: what color is the red circle ? ASSISTANT:"]
VIDEO_PROMPT = ["USER:", VIDEO, "what is in the last frame ? ASSISTANT:"]
MIXED_PROMPT = ["USER:", IMAGE, "and", VIDEO, "what is in the first frame ? ASSISTANT:"]
NEW_TOKENS = 4


@pytest.fixture(scope="module", params=list(FAMILIES))
def vlm(request) -> TinyVLM:
    return FAMILIES[request.param]()


# --- independent computations ----------------------------------------------------------------------


def definition_mask(policy: str, input_ids: torch.Tensor, vlm: TinyVLM, prompt_len: int | None = None) -> torch.Tensor:
    """bool ``[L, L]`` from DESIGN §3 for one unpadded sequence whose first ``prompt_len`` positions
    (default: all) are the prompt and the rest a continuation.

    Image placeholders have modality 1, video placeholders 2. For Gemma3 the model's own
    image-bidirectional blocks (same contiguous image run) are added, since futuremask ORs the policy
    on top of Gemma3's mask.
    """
    modality = vlm.modality(input_ids)
    vis = modality.bool()
    length = len(input_ids)
    prompt = torch.arange(length) < (length if prompt_len is None else prompt_len)
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    extra = {
        "causal": torch.zeros(length, length, dtype=torch.bool),
        "future": vis[i] & prompt[j],
        "future_v2v": vis[i] & vis[j] & prompt[j],
        "future_v2t": vis[i] & ~vis[j] & prompt[j],
        "mma": (modality[i] != modality[j]) & prompt[i] & prompt[j],
    }[policy]
    return (j <= i) | extra | (image_blocks(modality) if vlm.image_blocks else False)


def image_blocks(modality: torch.Tensor) -> torch.Tensor:
    """bool ``[L, L]``: pairs inside one contiguous run of visual tokens of one modality (``modality`` long
    ``[L]``, 0 text), Gemma3's bidirectional blocks."""
    run, runs = -1, []
    for k in range(len(modality)):
        if modality[k] and (k == 0 or modality[k] != modality[k - 1]):
            run += 1
        runs.append(run if modality[k] else -1)
    runs = torch.tensor(runs)
    return (runs[:, None] == runs[None, :]) & (runs[:, None] >= 0)


def _positions(vlm: TinyVLM, inputs: dict) -> torch.Tensor | None:
    """Position ids of the prompt as the model computes them (M-RoPE for Qwen-VL), else None."""
    if "mm_token_type_ids" not in inputs:
        return None
    kw = {k: inputs[k] for k in ("image_grid_thw", "video_grid_thw", "mm_token_type_ids", "attention_mask") if k in inputs}
    return vlm.model.model.get_rope_index(inputs["input_ids"], **kw)[0]


def dense_forward(vlm: TinyVLM, inputs: dict, mask: torch.Tensor, use_cache: bool = False,
                  sliding: torch.Tensor | None = None):
    """The untouched model's forward with an explicit boolean mask ``[L, L]`` on every text layer.

    Sliding-window layers (Gemma3's, PaliGemma2's) get ``sliding`` (bool ``[L, L]``), by default ``mask``
    cut to the window's reach into the past (``j > i - window``), the way Gemma3 cuts its own image
    blocks: a pre-hook hands it to those layers.
    """
    call = {k: v for k, v in inputs.items() if k not in ("attention_mask", "token_type_ids", "mm_token_type_ids")}
    call["attention_mask"] = mask[None, None]
    positions = _positions(vlm, inputs)
    if positions is not None:
        call["position_ids"] = positions
    text = vlm.model.config.get_text_config()
    sliding_layers = [k for k, kind in enumerate(getattr(text, "layer_types", None) or ()) if kind == "sliding_attention"]
    hooks = []
    if sliding_layers:
        windowed = (mask & window(mask.shape[0], text.sliding_window) if sliding is None else sliding)[None, None]
        layers = vlm.model.model.language_model.layers
        hooks = [layers[k].register_forward_pre_hook(lambda m, a, kw: (a, {**kw, "attention_mask": windowed}),
                                                     with_kwargs=True) for k in sliding_layers]
    try:
        with torch.no_grad():
            return vlm.model(**call, use_cache=use_cache)
    finally:
        for hook in hooks:
            hook.remove()


def window(length: int, size: int) -> torch.Tensor:
    """bool ``[L, L]``: keys within ``size`` positions of the past, and every future key (``j > i - size``)."""
    return torch.arange(length)[None, :] > torch.arange(length)[:, None] - size


def manual_greedy(vlm: TinyVLM, inputs: dict, prefill, steps: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy decoding by hand: argmax, then one causal step at a time on the prefill's KV cache."""
    length = inputs["input_ids"].shape[1]
    positions = _positions(vlm, inputs)
    next_pos = length if positions is None else int(positions.max()) + 1
    cache, logits = prefill.past_key_values, prefill.logits[:, -1]
    tokens, all_logits = [], []
    for t in range(steps):
        all_logits.append(logits[0])
        token = int(logits.argmax(-1))
        tokens.append(token)
        pos = torch.tensor([[next_pos + t]])
        if positions is not None:
            pos = pos.expand(3, 1, 1)
        with torch.no_grad():
            out = vlm.model(
                input_ids=torch.tensor([[token]]), attention_mask=torch.ones(1, length + t + 1, dtype=torch.long),
                position_ids=pos, past_key_values=cache, use_cache=True,
            )
        cache, logits = out.past_key_values, out.logits[:, -1]
    return tokens, all_logits


def logits_of(vlm: TinyVLM, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return vlm.model(**inputs).logits


def generate(vlm: TinyVLM, inputs: dict, **kwargs):
    with torch.no_grad():
        return vlm.model.generate(
            **inputs, max_new_tokens=NEW_TOKENS, do_sample=False, return_dict_in_generate=True, output_logits=True,
            **kwargs,
        )


# --- (a) causal is the stock model, and remove() restores it -----------------------------------------


def test_causal_matches_untouched_model_and_remove_restores(vlm):
    model = vlm.model
    impl = model.config.get_text_config()._attn_implementation
    for segments in (IMAGE_PROMPT, TEXT_PROMPT):
        inputs = build_inputs(vlm, segments)
        ref = logits_of(vlm, inputs)
        handle = fm.apply(model, "causal")
        assert model.config.get_text_config()._attn_implementation.startswith("futuremask_")
        got = logits_of(vlm, inputs)
        handle.remove()
        assert (got - ref).abs().max() <= 1e-6
        assert model.config.get_text_config()._attn_implementation == impl
        with fm.apply(model, "future"):
            logits_of(vlm, inputs)
        assert torch.equal(logits_of(vlm, inputs), ref)
    # the stock model is what the dense definition of `causal` gives (for Gemma3: with its image blocks)
    inputs = build_inputs(vlm, IMAGE_PROMPT)
    dense = dense_forward(vlm, inputs, definition_mask("causal", inputs["input_ids"][0], vlm)).logits
    assert (dense - logits_of(vlm, inputs)).abs().max() <= 1e-5


# --- (b) future-aware policies: change image prompts exactly as defined, leave text prompts alone ------


@pytest.mark.parametrize("policy", FUTURE_POLICIES)
def test_policy_matches_dense_definition(vlm, policy):
    inputs = build_inputs(vlm, IMAGE_PROMPT)
    stock = logits_of(vlm, inputs)
    with fm.apply(vlm.model, policy):
        got = logits_of(vlm, inputs)
    with fm.apply(vlm.model, policy, backend="eager"):
        got_eager = logits_of(vlm, inputs)
    expected = dense_forward(vlm, inputs, definition_mask(policy, inputs["input_ids"][0], vlm)).logits
    assert (got - expected).abs().max() <= 1e-5
    assert (got_eager - expected).abs().max() <= 1e-5
    assert (got - stock).abs().max() > 1e-3, "the policy should change the logits of an image prompt"
    assert (got[0, -1] - stock[0, -1]).abs().max() > 1e-4, "text after the images should feel the change"

    text = build_inputs(vlm, TEXT_PROMPT)
    with fm.apply(vlm.model, policy):
        got_text = logits_of(vlm, text)
    assert (got_text - logits_of(vlm, text)).abs().max() <= 1e-6


def test_image_bidirectional_is_gemma3s_block_mask(vlm):
    inputs = build_inputs(vlm, IMAGE_PROMPT)
    ids = inputs["input_ids"][0]
    with fm.apply(vlm.model, "image_bidirectional"):
        got = logits_of(vlm, inputs)
    causal = torch.arange(len(ids))[None, :] <= torch.arange(len(ids))[:, None]
    expected = dense_forward(vlm, inputs, causal | image_blocks(vlm.modality(ids))).logits
    assert (got - expected).abs().max() <= 1e-5
    if vlm.name == "gemma3":  # what Gemma3 does by itself
        assert (got - logits_of(vlm, inputs)).abs().max() <= 1e-6


# --- (c) generate = policy prefill + plain causal decoding with the cache ------------------------------


@pytest.mark.parametrize("policy", ["future", "mma"])
def test_generate_is_policy_prefill_then_causal_decode(vlm, policy):
    inputs = build_inputs(vlm, IMAGE_PROMPT)
    length = inputs["input_ids"].shape[1]
    with fm.apply(vlm.model, policy):
        out = generate(vlm, inputs)
        static = generate(vlm, inputs, cache_implementation="static")
    prefill = dense_forward(vlm, inputs, definition_mask(policy, inputs["input_ids"][0], vlm), use_cache=True)
    tokens, step_logits = manual_greedy(vlm, inputs, prefill, NEW_TOKENS)
    assert out.sequences[0, length:].tolist() == tokens
    assert static.sequences[0, length:].tolist() == tokens
    for got, got_static, want in zip(out.logits, static.logits, step_logits, strict=True):
        assert (got[0] - want).abs().max() <= 1e-4
        assert (got_static[0] - want).abs().max() <= 1e-4
    stock = generate(vlm, inputs)
    assert (stock.logits[0] - out.logits[0]).abs().max() > 1e-4, "generate() must run the prefill under the policy"


@pytest.mark.parametrize("policy", ["future", "mma"])
def test_left_padded_batch_matches_each_prompt_alone(vlm, policy):
    prompts = [IMAGE_PROMPT, TEXT_PROMPT, ONE_IMAGE_PROMPT]
    batch = build_batch(vlm, prompts, seeds=[0, 1, 2])
    assert (batch["attention_mask"] == 0).any(dim=1).tolist() == [False, True, True]
    with fm.apply(vlm.model, policy):
        out = generate(vlm, batch)
        for b, segments in enumerate(prompts):
            alone = generate(vlm, build_inputs(vlm, segments, seed=b))
            assert out.sequences[b, -NEW_TOKENS:].tolist() == alone.sequences[0, -NEW_TOKENS:].tolist()
            for got, want in zip(out.logits, alone.logits, strict=True):
                assert (got[b] - want[0]).abs().max() <= 1e-4


# --- continuation scoring --------------------------------------------------------------------------


def _dense_continuation_logprob(vlm, prompt: str, words: str, policy: str) -> tuple[float, float]:
    """``fm.continuation_logprob`` of ``words`` after ``prompt``, and the same sum from the stock model given the
    policy's dense definition mask over prompt + continuation (the continuation supervised)."""
    inputs = build_inputs(vlm, prompt)
    prompt_len = inputs["input_ids"].shape[1]
    cont = torch.tensor([vlm.tokenizer.convert_tokens_to_ids(words.split())])
    got = fm.continuation_logprob(vlm.model, inputs, cont, policy=policy)
    full = {**inputs, "input_ids": torch.cat([inputs["input_ids"], cont], 1)}
    full["attention_mask"] = torch.ones_like(full["input_ids"])
    if vlm.token_type_key is not None:
        full[vlm.token_type_key] = torch.nn.functional.pad(inputs[vlm.token_type_key], (0, cont.shape[1]))
    mask = definition_mask(policy, full["input_ids"][0], vlm, prompt_len=prompt_len)
    logits = dense_forward(vlm, full, mask).logits[0, prompt_len - 1 : -1]
    want = torch.log_softmax(logits, -1).gather(-1, cont[0, :, None]).sum()
    return float(got[0]), float(want)


@pytest.mark.parametrize("policy", ("causal",) + FUTURE_POLICIES)
def test_continuation_logprob_matches_dense_definition(vlm, policy):
    got, want = _dense_continuation_logprob(vlm, IMAGE_PROMPT, "the red circle is left", policy)
    assert abs(got - want) <= 1e-5


# --- (d) the light (merge) variant -----------------------------------------------------------------


def test_merge_kernel_generates_and_leaves_text_prompts_alone(vlm):
    merge = fm.Merge("kernel")
    inputs = build_inputs(vlm, IMAGE_PROMPT)
    length = inputs["input_ids"].shape[1]
    with fm.apply(vlm.model, "future", merge=merge):
        out = generate(vlm, inputs)
        with torch.no_grad():
            prefill = vlm.model(**inputs, use_cache=True)
    tokens, step_logits = manual_greedy(vlm, inputs, prefill, NEW_TOKENS)
    assert out.sequences[0, length:].tolist() == tokens
    assert (out.logits[0][0] - logits_of(vlm, inputs)[0, -1]).abs().max() > 1e-4

    text = build_inputs(vlm, TEXT_PROMPT)
    with fm.apply(vlm.model, "future", merge=merge):
        got = logits_of(vlm, text)
        text_out = generate(vlm, text)
    assert (got - logits_of(vlm, text)).abs().max() <= 1e-5
    assert torch.equal(text_out.sequences, generate(vlm, text).sequences)


# --- Gemma3: its own image-bidirectional mask stays under every policy -----------------------------


def test_gemma3_keeps_its_image_blocks():
    vlm = FAMILIES["gemma3"]()
    inputs = build_inputs(vlm, ONE_IMAGE_PROMPT)
    ids = inputs["input_ids"][0]
    stock = logits_of(vlm, inputs)
    plain_causal = torch.arange(len(ids))[None, :] <= torch.arange(len(ids))[:, None]
    # the stock model is not plainly causal on image tokens ...
    assert (dense_forward(vlm, inputs, plain_causal).logits - stock).abs().max() > 1e-3
    # ... and with a single image, future_v2v adds nothing to Gemma3's own image block
    with fm.apply(vlm.model, "future_v2v"):
        assert (logits_of(vlm, inputs) - stock).abs().max() <= 1e-6
    # while future_v2t adds the text after the image to the image rows, on top of the block
    with fm.apply(vlm.model, "future_v2t"):
        got = logits_of(vlm, inputs)
    expected = dense_forward(vlm, inputs, definition_mask("future_v2t", ids, vlm)).logits
    assert (got - expected).abs().max() <= 1e-5


# --- videos: placeholders of modality 2, visual under every policy ---------------------------------


@pytest.fixture(scope="module", params=VIDEO_FAMILIES)
def video_vlm(request) -> TinyVLM:
    return FAMILIES[request.param]()


@pytest.mark.parametrize("policy", FUTURE_POLICIES)
def test_video_policy_matches_dense_definition(video_vlm, policy):
    """Video tokens are visual (modality 2): frames see later frames under future_v2v, and under mma an
    image's rows see a later video (another modality), which they would not if video counted as image."""
    for segments in (VIDEO_PROMPT, MIXED_PROMPT):
        inputs = build_inputs(video_vlm, segments)
        ids = inputs["input_ids"][0]
        layout = TokenLayout.from_inputs(video_vlm.model.config, input_ids=inputs["input_ids"],
                                         mm_token_type_ids=inputs.get("mm_token_type_ids"))
        assert layout.modality[0].tolist() == video_vlm.modality(ids).tolist()
        assert (layout.modality == 2).sum() == len([t for t in video_vlm.video.block if t == video_vlm.video.token_id])
        with fm.apply(video_vlm.model, policy):
            got = logits_of(video_vlm, inputs)
        with fm.apply(video_vlm.model, policy, backend="eager"):
            got_eager = logits_of(video_vlm, inputs)
        expected = dense_forward(video_vlm, inputs, definition_mask(policy, ids, video_vlm)).logits
        assert (got - expected).abs().max() <= 1e-5
        assert (got_eager - expected).abs().max() <= 1e-5
        assert (got[0, -1] - logits_of(video_vlm, inputs)[0, -1]).abs().max() > 1e-4
    if policy == "mma":  # inputs: the mixed prompt
        as_image = (definition_mask("mma", torch.where(ids == video_vlm.video.token_id, video_vlm.image_token_id, ids),
                                    video_vlm))
        assert not torch.equal(as_image, definition_mask("mma", ids, video_vlm))
        assert (dense_forward(video_vlm, inputs, as_image).logits - got).abs().max() > 1e-4


def test_video_image_bidirectional_is_one_block_per_contiguous_run(video_vlm):
    """image_bidirectional: one block per contiguous run of video placeholders. Qwen2-VL, Qwen2.5-VL and
    LLaVA-OneVision write a video's frames as one run (one block, all frames); Qwen3-VL puts a timestamp
    and vision start/end between frames, so each frame is its own block."""
    inputs = build_inputs(video_vlm, MIXED_PROMPT)
    ids = inputs["input_ids"][0]
    layout = TokenLayout.from_inputs(video_vlm.model.config, input_ids=inputs["input_ids"],
                                     mm_token_type_ids=inputs.get("mm_token_type_ids"))
    video_runs = layout.visual_run[0][layout.modality[0] == 2].unique()
    assert len(video_runs) == (2 if video_vlm.name == "qwen3_vl" else 1)
    with fm.apply(video_vlm.model, "image_bidirectional"):
        got = logits_of(video_vlm, inputs)
    causal = torch.arange(len(ids))[None, :] <= torch.arange(len(ids))[:, None]
    expected = dense_forward(video_vlm, inputs, causal | image_blocks(video_vlm.modality(ids))).logits
    assert (got - expected).abs().max() <= 1e-5
    assert (got - logits_of(video_vlm, inputs)).abs().max() > 1e-4


def test_video_generate_is_policy_prefill_then_causal_decode(video_vlm):
    inputs = build_inputs(video_vlm, MIXED_PROMPT)
    length = inputs["input_ids"].shape[1]
    with fm.apply(video_vlm.model, "future_v2v"):
        out = generate(video_vlm, inputs)
    prefill = dense_forward(video_vlm, inputs, definition_mask("future_v2v", inputs["input_ids"][0], video_vlm),
                            use_cache=True)
    tokens, step_logits = manual_greedy(video_vlm, inputs, prefill, NEW_TOKENS)
    assert out.sequences[0, length:].tolist() == tokens
    for got, want in zip(out.logits, step_logits, strict=True):
        assert (got[0] - want).abs().max() <= 1e-4


@pytest.mark.parametrize("policy", ["future", "mma"])
def test_video_continuation_logprob_matches_dense_definition(video_vlm, policy):
    got, want = _dense_continuation_logprob(video_vlm, MIXED_PROMPT, "a red circle", policy)
    assert abs(got - want) <= 1e-5


# --- Mistral3 / Pixtral: only [IMG] is visual ------------------------------------------------------


def test_mistral3_only_img_placeholders_are_visual():
    """[IMG] carries the vision features; [IMG_BREAK] / [IMG_END] are text embeddings and stay text, also
    when a processor's mm_token_type_ids marks them (PixtralProcessor.image_token_ids lists all three)."""
    vlm = FAMILIES["mistral3"]()
    inputs = build_inputs(vlm, IMAGE_PROMPT)
    ids = inputs["input_ids"]
    brk, end = vlm.tokenizer.convert_tokens_to_ids(["[IMG_BREAK]", "[IMG_END]"])
    assert int((ids == brk).sum()) == 2 and int((ids == end).sum()) == 2
    with torch.no_grad():
        embeds = vlm.model.get_input_embeddings()(ids)
        replaced = vlm.model.model.get_placeholder_mask(ids, inputs_embeds=embeds, image_features=torch.zeros(8, embeds.shape[-1]))
    config = vlm.model.config
    assert torch.equal(TokenLayout.from_inputs(config, input_ids=ids).visual, replaced[..., 0])
    marked = torch.isin(ids, torch.tensor([vlm.image_token_id, brk, end])).long()
    assert torch.equal(TokenLayout.from_inputs(config, input_ids=ids, mm_token_type_ids=marked).visual, replaced[..., 0])


# --- PaliGemma / PaliGemma2: the prefix-LM mask stays, policies are ORed on top -----------------------


@pytest.fixture(scope="module", params=list(PREFIX_LM_FAMILIES))
def prefix_vlm(request) -> TinyVLM:
    return PREFIX_LM_FAMILIES[request.param]()


def prefix_forward(vlm: TinyVLM, inputs: dict, prompt_len: int):
    """The untouched model with PaliGemma's mask written out: causal, OR every pair inside the first
    ``prompt_len`` positions (the prefix). On sliding layers only the causal part is windowed: transformers
    ORs the prefix block onto the sliding-window mask, so the prefix stays whole there."""
    length = inputs["input_ids"].shape[1]
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    block = (i < prompt_len) & (j < prompt_len)
    causal = j <= i
    size = getattr(vlm.model.config.get_text_config(), "sliding_window", None) or length
    return dense_forward(vlm, inputs, causal | block, sliding=(causal & window(length, size)) | block)


def test_prefix_lm_causal_is_the_stock_prefix_mask(prefix_vlm):
    """`causal` on PaliGemma is the stock model: the whole prompt (image and text) sees itself both ways."""
    inputs = build_inputs(prefix_vlm, IMAGE_PROMPT)
    length = inputs["input_ids"].shape[1]
    stock = logits_of(prefix_vlm, inputs)
    assert (prefix_forward(prefix_vlm, inputs, length).logits - stock).abs().max() <= 1e-5
    assert (prefix_forward(prefix_vlm, inputs, 0).logits - stock).abs().max() > 1e-3
    backends = ("auto", "eager") if prefix_vlm.name == "paligemma2" else ("auto", "sdpa", "eager")
    for backend in backends:
        with fm.apply(prefix_vlm.model, "causal", backend=backend):
            assert (logits_of(prefix_vlm, inputs) - stock).abs().max() <= 1e-6


@pytest.mark.parametrize("policy", (*FUTURE_POLICIES, "image_bidirectional"))
def test_prefix_lm_policies_add_nothing_to_the_prompt(prefix_vlm, policy):
    """Every prompt pair is already allowed by the prefix block, so a policy changes neither the prefill
    nor what generate() yields."""
    inputs = build_inputs(prefix_vlm, IMAGE_PROMPT)
    stock, stock_out = logits_of(prefix_vlm, inputs), generate(prefix_vlm, inputs)
    with fm.apply(prefix_vlm.model, policy):
        assert (logits_of(prefix_vlm, inputs) - stock).abs().max() <= 1e-6
        out = generate(prefix_vlm, inputs)
    assert torch.equal(out.sequences, stock_out.sequences)
    for got, want in zip(out.logits, stock_out.logits, strict=True):
        assert (got - want).abs().max() <= 1e-5


@pytest.mark.parametrize("policy", ("causal", "future", "mma"))
def test_prefix_lm_continuation_is_its_causal_suffix(prefix_vlm, policy):
    """A scored continuation is PaliGemma's suffix (token_type_ids 1): causal, and unseen by the prefix.

    Checked against the untouched model given the processor's suffix types, and for PaliGemma (v1) also
    against the mask written out (PaliGemma2's dense reference is not reproduced here, see docs/models.md).
    """
    inputs = build_inputs(prefix_vlm, IMAGE_PROMPT)
    prompt_len = inputs["input_ids"].shape[1]
    cont = torch.tensor([prefix_vlm.tokenizer.convert_tokens_to_ids("the red circle is left".split())])
    got = fm.continuation_logprob(prefix_vlm.model, inputs, cont, policy=policy)
    full = {**inputs, "input_ids": torch.cat([inputs["input_ids"], cont], 1)}
    full["attention_mask"] = torch.ones_like(full["input_ids"])
    full["token_type_ids"] = torch.nn.functional.pad(inputs["token_type_ids"], (0, cont.shape[1]), value=1)
    references = [logits_of(prefix_vlm, full)]
    if prefix_vlm.name == "paligemma":
        references.append(prefix_forward(prefix_vlm, full, prompt_len).logits)
    for logits in references:
        want = torch.log_softmax(logits[0, prompt_len - 1 : -1], -1).gather(-1, cont[0, :, None]).sum()
        assert abs(float(got[0]) - float(want)) <= 1e-5


def test_prefix_lm_without_token_type_ids_is_refused(prefix_vlm):
    inputs = build_inputs(prefix_vlm, IMAGE_PROMPT)
    del inputs["token_type_ids"]
    for policy in ("causal", "future"):
        with fm.apply(prefix_vlm.model, policy), pytest.raises(ValueError, match="Pass the processor's token_type_ids"):
            logits_of(prefix_vlm, inputs)


def test_softcapped_attention_runs_on_eager_only():
    """PaliGemma2 (Gemma2) caps its attention logits: auto picks the eager kernel, which computes the cap,
    and the kernels that cannot are refused instead of silently dropping it."""
    vlm = PREFIX_LM_FAMILIES["paligemma2"]()
    with fm.apply(vlm.model, "future") as handle:
        assert handle.backend == "eager"
    for kwargs in ({"backend": "sdpa"}, {"backend": "flex"}, {"merge": fm.Merge("kernel")}):
        with pytest.raises(ValueError, match="attn_logit_softcapping=2.0"):
            fm.apply(vlm.model, "future", **kwargs)
