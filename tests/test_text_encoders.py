"""Text encoders: a tiny local T5, the synthetic-world CaptionEncoder, precomputed embeddings."""

import pytest
import torch

from tora.models.text_encoders import CaptionEncoder, T5TextEncoder, stack_text_embeddings

WORDS = ["a", "red", "blue", "circle", "square", "moves", "left", "right", "slowly", "up"]


@pytest.fixture(scope="module")
def tiny_t5_dir(tmp_path_factory):
    """A randomly initialised 1-layer T5 encoder and a word-level tokenizer, saved locally."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    path = tmp_path_factory.mktemp("tiny_t5")
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {word: i + 3 for i, word in enumerate(WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(path)
    config = T5Config(
        vocab_size=len(vocab),
        d_model=32,
        num_layers=1,
        num_heads=2,
        d_ff=64,
        d_kv=16,
        pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    T5EncoderModel(config).save_pretrained(path)
    return path


def test_t5_encoder_shapes_and_mask(tiny_t5_dir):
    encoder = T5TextEncoder(tiny_t5_dir, max_length=8)
    assert encoder.output_dim == 32 and encoder.max_length == 8
    y, mask = encoder.encode(["a red circle", "a blue square moves left", "a red " * 10])
    assert y.shape == (3, 1, 8, 32)
    assert mask.dtype == torch.long
    assert mask.tolist() == [[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0], [1] * 8]


def test_t5_encoder_padding_does_not_change_real_tokens(tiny_t5_dir):
    short, long = (
        T5TextEncoder(tiny_t5_dir, max_length=6),
        T5TextEncoder(tiny_t5_dir, max_length=12),
    )
    y_short, _ = short.encode(["a red circle moves"])
    y_long, _ = long.encode(["a red circle moves"])
    torch.testing.assert_close(y_short[:, :, :5], y_long[:, :, :5])


def test_t5_encoder_is_frozen(tiny_t5_dir):
    encoder = T5TextEncoder(tiny_t5_dir, max_length=8).train()
    assert not encoder.model.training
    assert not any(p.requires_grad for p in encoder.parameters())
    y, _ = encoder.encode(["a red circle"])
    assert not y.requires_grad


def test_t5_encoder_missing_path(tmp_path):
    missing = tmp_path / "no_such_t5"
    with pytest.raises(FileNotFoundError, match="no_such_t5.*config.json"):
        T5TextEncoder(missing)


def test_caption_tokenizer_is_deterministic_and_case_insensitive():
    first, second = (
        CaptionEncoder(vocab_size=1000, max_length=6),
        CaptionEncoder(vocab_size=1000, max_length=6),
    )
    ids, mask = first.tokenize(["A Red circle, moves!", "a red circle moves", ""])
    assert torch.equal(
        ids, second.tokenize(["a red circle moves", "A RED CIRCLE MOVES", ""])[0][[1, 0, 2]]
    )
    assert torch.equal(ids[0], ids[1])
    assert mask.tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]]
    assert ids[0, 4] == CaptionEncoder.END_ID and ids[2, 0] == CaptionEncoder.END_ID
    assert (ids[0, :4] >= 2).all() and (ids[0, :4] < 1000).all()
    assert ids[0, :4].unique().numel() == 4
    long_ids, long_mask = first.tokenize(["one two three four five six seven"])
    assert long_mask.sum() == 6 and long_ids[0, -1] == CaptionEncoder.END_ID


def test_caption_encoder_shapes_mask_and_gradients():
    torch.manual_seed(0)
    encoder = CaptionEncoder(vocab_size=512, max_length=10, output_dim=32, num_heads=4)
    y, mask = encoder.encode(["a red circle moves left", "square"])
    assert y.shape == (2, 1, 10, 32) and mask.shape == (2, 10)
    assert mask.sum(dim=1).tolist() == [6, 2]
    y.sum().backward()
    assert encoder.token_embedding.weight.grad.abs().sum() > 0


def test_caption_encoder_ignores_padding():
    """Real tokens do not attend to padding: changing the padding embedding changes nothing."""
    torch.manual_seed(0)
    encoder = CaptionEncoder(vocab_size=512, max_length=10, output_dim=32, num_heads=4).eval()
    before, mask = encoder.encode(["square", "a red circle moves left"])
    with torch.no_grad():
        encoder.token_embedding.weight[CaptionEncoder.PAD_ID] = torch.randn(32)
    after, _ = encoder.encode(["square", "a red circle moves left"])
    real = mask.bool()[:, None, :, None].expand_as(before)
    torch.testing.assert_close(before[real], after[real])
    assert not torch.allclose(before[~real], after[~real])


def test_null_caption():
    encoder = CaptionEncoder(vocab_size=512, max_length=10, output_dim=32, num_heads=4)
    y, mask = encoder.null(3)
    assert y.shape == (3, 1, 10, 32) and mask.sum(dim=1).tolist() == [1, 1, 1]
    learned = torch.randn(10, 32)
    y, mask = encoder.null(2, null_embedding=learned)
    assert mask is None and torch.equal(y[1, 0], learned)


def test_stack_text_embeddings():
    y, mask = stack_text_embeddings([torch.ones(3, 8), torch.ones(7, 8) * 2], max_length=5)
    assert y.shape == (2, 1, 5, 8)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert y[0, 0, 3:].abs().sum() == 0 and (y[1, 0] == 2).all()
    with pytest.raises(ValueError, match="entry 1"):
        stack_text_embeddings([torch.ones(3, 8), torch.ones(3, 4)], max_length=5)
