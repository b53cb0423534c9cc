"""An offline-trained byte-level BPE tokenizer for the tiny checkpoints (no hub download)."""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

def chat_template(audio: str = "") -> str:
    """Qwen-style ChatML; ``audio`` is what an audio part renders as (models that hear)."""
    audio_branch = f"{{% elif part['type'] == 'audio' %}}{{{{ '{audio}' }}}}" if audio else ""
    return (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'text' %}{{ part['text'] }}"
        "{% elif part['type'] == 'image' or part['type'] == 'image_url' %}"
        "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
        "{% elif part['type'] == 'video' or part['type'] == 'video_url' %}"
        "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}" + audio_branch + "{% endif %}"
        "{% endfor %}{% endif %}"
        "{{ '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )


CHAT_TEMPLATE = chat_template()

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>",
                  "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

_CORPUS = """
The quick brown fox jumps over the lazy dog. A picture shows a red square on a blue field.
Describe the image in one sentence. What is the weather like today? It is sunny and warm.
omnistage serves multimodal models as a graph of stages: encode, prefill, decode, diffusion.
Hello, how are you? I am fine, thank you. Tell me a story about a cat who learned to sing.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Colors: red green blue yellow black white purple.
The model reads text and images, and it writes text, speech, pictures and short videos.
"""


def build_tokenizer(vocab_size: int = 512, model_max_length: int = 4096) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        bos_token=None, unk_token=None, model_max_length=model_max_length,
        chat_template=CHAT_TEMPLATE, extra_special_tokens={"image_token": "<|image_pad|>",
                                                           "video_token": "<|video_pad|>",
                                                           "vision_bos_token": "<|vision_start|>",
                                                           "vision_eos_token": "<|vision_end|>"})
