"""Tiny text-to-speech checkpoint: SpeechT5 (text -> mel) with a HiFi-GAN vocoder and voices."""
from __future__ import annotations

from pathlib import Path

import torch

from omnistage.models.tokenizer import build_tokenizer

# OpenAI's voice names, each a speaker embedding (x-vector) the decoder is conditioned on.
VOICES = ("alloy", "ash", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer")


def build_speecht5(out: Path) -> None:
    """SpeechT5ForTextToSpeech saved at the root, its vocoder under ``vocoder/``, voices in
    ``voices.safetensors``. The decoder prenet's dropout is 0 (real checkpoints use 0.5 at
    inference too, which makes their output depend on the RNG), and the stop head is biased
    off so that random weights speak until the length limit instead of stopping at once."""
    from safetensors.torch import save_file
    from transformers import SpeechT5Config, SpeechT5ForTextToSpeech, SpeechT5HifiGan, SpeechT5HifiGanConfig
    tok = build_tokenizer(model_max_length=256)
    config = SpeechT5Config(
        vocab_size=len(tok), hidden_size=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, speech_decoder_prenet_units=32,
        speech_decoder_prenet_dropout=0.0, speech_decoder_postnet_units=32, speech_decoder_postnet_layers=2,
        num_mel_bins=16, speaker_embedding_dim=16, max_speech_positions=1024, max_text_positions=256,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.eos_token_id)
    model = SpeechT5ForTextToSpeech(config).eval()
    with torch.no_grad():
        model.speech_decoder_postnet.prob_out.bias.fill_(-20.0)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=16, upsample_initial_channel=32, upsample_rates=[4, 4, 4, 4], upsample_kernel_sizes=[8, 8, 8, 8],
        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]], sampling_rate=16000)).eval()
    vocoder.save_pretrained(out / "vocoder")
    save_file({name: torch.randn(16) for name in VOICES}, str(out / "voices.safetensors"))
