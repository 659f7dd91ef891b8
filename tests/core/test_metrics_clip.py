"""CLIP-SIM's CLIP: the tokenizer on a hand-written vocabulary, the network's
state dict as transformers' CLIPModel's for a tiny config.json, the folder
round trip and exact properties of the similarity. (Tokens and embeddings were
checked to match transformers' CLIPTokenizer and CLIPModel when these were
written.)"""

import json

import pytest
import torch
from safetensors.torch import save_file

from vldm_core.metrics.clip import MEAN, STD, CLIPConfig, CLIPModel, CLIPTokenizer, clip_similarity, frame_text_cosines, load_clip, preprocess
from vldm_core.weights import WeightFileError

# byte-level: "é" is the bytes c3 a9, which CLIP's byte map writes "Ã" and "©"
VOCAB = ["!", "!</w>", "a", "a</w>", "c", "c</w>", "t", "t</w>", "s", "s</w>", "'", "Ã", "©</w>", "ca", "at</w>", "cat</w>", "'s</w>", "<|startoftext|>", "<|endoftext|>"]
MERGES = ["c a", "a t</w>", "ca t</w>", "' s</w>"]
ID = {token: i for i, token in enumerate(VOCAB)}
START, END = ID["<|startoftext|>"], ID["<|endoftext|>"]

CONFIG = {
    "model_type": "clip",
    "projection_dim": 12,
    "text_config": {"vocab_size": len(VOCAB), "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 8, "eos_token_id": 2},
    "vision_config": {"hidden_size": 20, "intermediate_size": 28, "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
}


@pytest.fixture
def tokenizer():
    return CLIPTokenizer(ID, [m.split() for m in MERGES], context_length=8)


@pytest.mark.parametrize(
    "text, ids",
    [
        ("cat", ["cat</w>"]),  # c a -> ca, then ca t</w> -> cat</w>
        ("at", ["at</w>"]),
        ("cats", ["ca", "t", "s</w>"]),  # no merge for (ca, t) or (t, s</w>)
        ("  CAT\n\tat ", ["cat</w>", "at</w>"]),  # whitespace runs and case
        ("cat!!", ["cat</w>", "!", "!</w>"]),  # letters and other characters are separate words
        ("cat's", ["cat</w>", "'s</w>"]),  # contraction
        ("é", ["Ã", "©</w>"]),
        ("z", ["<|endoftext|>"]),  # unknown, as transformers does
        ("cat&amp;", ["cat</w>", "<|endoftext|>"]),  # "&" unknown here; HTML entities unescaped first, as CLIP
        ("a<|endoftext|>a", ["a</w>", "<|endoftext|>", "a</w>"]),
    ],
)
def test_tokenizer_gives_clip_s_ids(tokenizer, text, ids):
    assert tokenizer.encode(text) == [START, *(ID[t] for t in ids), END]


def test_tokens_are_cut_to_the_context_and_padded_with_the_end_token(tokenizer):
    assert tokenizer.encode("cat " * 10) == [START, *[ID["cat</w>"]] * 6, END]
    ids = tokenizer(["cat", "at at"])
    assert ids.tolist() == [[START, ID["cat</w>"], END] + [END] * 5, [START, ID["at</w>"], ID["at</w>"], END] + [END] * 4]


def test_tokenizer_reads_vocab_and_merges_files(tmp_path, tokenizer):
    (tmp_path / "vocab.json").write_text(json.dumps(ID), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n", encoding="utf-8")
    loaded = CLIPTokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt", context_length=8)
    assert loaded.ranks == tokenizer.ranks and loaded.encode("cat's ca") == tokenizer.encode("cat's ca")


def expected_keys(config: CLIPConfig):
    """transformers' CLIPModel state dict for ``config``, with shapes."""
    t, v = config.text, config.vision

    def layers(prefix, c):
        keys = {}
        for i in range(c.num_hidden_layers):
            p = f"{prefix}.encoder.layers.{i}"
            for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
                keys |= {f"{p}.self_attn.{proj}.weight": (c.hidden_size, c.hidden_size), f"{p}.self_attn.{proj}.bias": (c.hidden_size,)}
            keys |= {f"{p}.{norm}.{w}": (c.hidden_size,) for norm in ("layer_norm1", "layer_norm2") for w in ("weight", "bias")}
            keys |= {f"{p}.mlp.fc1.weight": (c.intermediate_size, c.hidden_size), f"{p}.mlp.fc1.bias": (c.intermediate_size,)}
            keys |= {f"{p}.mlp.fc2.weight": (c.hidden_size, c.intermediate_size), f"{p}.mlp.fc2.bias": (c.hidden_size,)}
        return keys

    return {
        "text_model.embeddings.token_embedding.weight": (t.vocab_size, t.hidden_size),
        "text_model.embeddings.position_embedding.weight": (t.max_position_embeddings, t.hidden_size),
        **layers("text_model", t),
        "text_model.final_layer_norm.weight": (t.hidden_size,),
        "text_model.final_layer_norm.bias": (t.hidden_size,),
        "vision_model.embeddings.class_embedding": (v.hidden_size,),
        "vision_model.embeddings.patch_embedding.weight": (v.hidden_size, v.num_channels, v.patch_size, v.patch_size),
        "vision_model.embeddings.position_embedding.weight": ((v.image_size // v.patch_size) ** 2 + 1, v.hidden_size),
        "vision_model.pre_layrnorm.weight": (v.hidden_size,),
        "vision_model.pre_layrnorm.bias": (v.hidden_size,),
        **layers("vision_model", v),
        "vision_model.post_layernorm.weight": (v.hidden_size,),
        "vision_model.post_layernorm.bias": (v.hidden_size,),
        "visual_projection.weight": (config.projection_dim, v.hidden_size),
        "text_projection.weight": (config.projection_dim, t.hidden_size),
        "logit_scale": (),
    }


def test_config_json_sizes_the_network_and_defaults_are_clip_vit_b_32_s():
    config = CLIPConfig.from_dict(CONFIG)
    assert (config.text.hidden_size, config.vision.patch_size, config.projection_dim, config.vision.num_channels) == (16, 8, 12, 3)
    model = CLIPModel(config)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected_keys(config)
    base = CLIPConfig.from_dict({})
    assert (base.text.hidden_size, base.text.num_hidden_layers, base.vision.hidden_size, base.vision.image_size, base.vision.patch_size, base.projection_dim) == (512, 12, 768, 224, 32, 512)
    with torch.device("meta"):
        assert sum(v.numel() for v in CLIPModel(base).state_dict().values()) == 151_277_313  # openai/clip-vit-base-patch32


@pytest.fixture
def folder(tmp_path):
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig.from_dict(CONFIG))
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    (tmp_path / "vocab.json").write_text(json.dumps(ID), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n", encoding="utf-8")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["text_model.embeddings.position_ids"] = torch.arange(8)[None]  # older transformers saved it
    save_file(state, str(tmp_path / "model.safetensors"))
    return tmp_path, model


def test_folder_round_trips(folder):
    path, model = folder
    loaded, tokenizer = load_clip(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert tokenizer.context_length == 8 and tokenizer.encode("cat") == [START, ID["cat</w>"], END]


def test_preprocess_resizes_the_short_side_and_crops_the_centre():
    frames = torch.rand(2, 3, 16, 40)
    out = preprocess(frames, 16)  # short side already 16: only the crop, columns 12..27
    torch.testing.assert_close(out, (frames[..., 12:28] - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])
    assert preprocess(torch.rand(1, 3, 90, 45), 32).shape == (1, 3, 32, 32)


def test_similarity_is_a_mean_of_cosines_independent_of_batching(folder):
    model, tokenizer = load_clip(folder[0])
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(5, 3, 40, 60, generator=g)
    frames[3] = frames[1]
    cosines = frame_text_cosines(model, tokenizer, frames, "a cat's cat")
    assert cosines.shape == (5,) and (cosines.abs() <= 1).all()
    assert cosines[3] == cosines[1]
    torch.testing.assert_close(frame_text_cosines(model, tokenizer, frames, "a cat's cat", batch_size=2), cosines)
    torch.testing.assert_close(frame_text_cosines(model, tokenizer, frames[2:3], "a cat's cat"), cosines[2:3])
    assert clip_similarity(model, tokenizer, frames, "a cat's cat") == pytest.approx(cosines.mean().item())


def test_text_embedding_is_read_at_the_first_end_token_whatever_the_padding(folder):
    model, tokenizer = load_clip(folder[0])
    ids = tokenizer(["cat at"])
    other_padding = ids.clone()
    other_padding[0, 4:] = ID["c"]
    with torch.no_grad():
        torch.testing.assert_close(model.text_embeds(other_padding, END), model.text_embeds(ids, END))
        assert not torch.allclose(model.text_embeds(tokenizer(["at cat"]), END), model.text_embeds(ids, END))


def test_incomplete_or_foreign_folders_are_refused_with_the_fix(folder):
    path, _ = folder
    (path / "model.safetensors").rename(path / "elsewhere.safetensors")
    (path / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(WeightFileError, match=r"lacks model.safetensors \(pickled pytorch_model.bin is never opened\).*save_pretrained"):
        load_clip(path)
    (path / "elsewhere.safetensors").rename(path / "model.safetensors")
    (path / "config.json").write_text(json.dumps({**CONFIG, "model_type": "clip_text_model"}))
    with pytest.raises(WeightFileError, match="'clip_text_model' model, not a CLIPModel"):
        load_clip(path)
    (path / "config.json").write_text(json.dumps(CONFIG))
    (path / "vocab.json").write_text(json.dumps({"a</w>": 0}))
    with pytest.raises(WeightFileError, match="not CLIP's tokenizer files"):
        load_clip(path)
    (path / "vocab.json").write_text(json.dumps(ID))
    (path / "config.json").write_text(json.dumps({**CONFIG, "projection_dim": 10}))
    with pytest.raises(WeightFileError, match=r"/model.safetensors does not hold .*visual_projection.weight is \(12, 20\), not \(10, 20\)"):
        load_clip(path)
