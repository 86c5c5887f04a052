import pytest
import torch

from safealign_lib import models


def test_roundtrip_from_local_safetensors(tiny_lm, tmp_path):
    model, tok = tiny_lm
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    m, t = models.load_model_and_tokenizer(tmp_path)
    assert not m.training and t.padding_side == "left"
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(m(input_ids=ids).logits, model(input_ids=ids).logits)
    assert len(models.decoder_layers(m)) == 2


def test_refuses_pickled_weights_and_missing_folders(tiny_lm, tmp_path):
    model, _ = tiny_lm
    model.save_pretrained(tmp_path, safe_serialization=False)
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    if not any(tmp_path.glob("*.bin")):  # transformers 5 may always write safetensors
        torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="pickled weights"):
        models.load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.load_model(tmp_path / "missing")


def test_hub_ids_are_not_local_and_dtypes():
    assert not models.is_local("meta-llama/Llama-2-7b-chat-hf")
    assert models.is_local("./data/organism/chat")
    assert models.resolve_dtype("bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="Unknown dtype"):
        models.resolve_dtype("int3")


def test_hub_id_offline_fails_without_network():
    # HF_HUB_OFFLINE=1 (conftest): with the opt-in, the real loading code path runs and fails
    with pytest.raises(OSError):
        models.load_model("meta-llama/Llama-2-7b-chat-hf", allow_download=True)


def test_hub_is_never_reached_without_an_opt_in():
    # a mistyped local path with one slash looks like a hub id: it must not be looked up
    for name in ("organism/chat", "meta-llama/Llama-2-7b-chat-hf"):
        with pytest.raises(FileNotFoundError, match="hub downloads are off"):
            models.load_model(name)
        with pytest.raises(FileNotFoundError, match="hub downloads are off"):
            models.load_tokenizer(name)
