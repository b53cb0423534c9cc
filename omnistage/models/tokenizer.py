"""An offline-trained byte-level BPE tokenizer for the tiny checkpoints (no hub download)."""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

# Tool calling in Qwen2.5's format (Hermes'): the tools as JSON lines in the system turn,
# each call as {"name": ..., "arguments": ...} between <tool_call> tags, tool results in a user
# turn between <tool_response> tags.
_QWEN_TOOLS = (
    "{%- if tools %}{{ '<|im_start|>system\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    "{%- else %}{{ 'You are a helpful assistant.' }}{%- endif %}"
    "{{ '\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}"
    "{%- for tool in tools %}{{ '\n' }}{{ tool | tojson }}{%- endfor %}"
    "{{ '\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
    "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n' }}{%- endif %}"
)
_QWEN_CALLS = (
    "{%- elif message['role'] == 'assistant' and message.get('tool_calls') %}"
    "{{ '<|im_start|>assistant' }}{%- if message['content'] %}{{ '\n' + message['content'] }}{%- endif %}"
    "{%- for call in message['tool_calls'] %}{%- set call = call['function'] if call['function'] is defined else call %}"
    "{{ '\n<tool_call>\n{\"name\": \"' + call['name'] + '\", \"arguments\": ' }}"
    "{{ call['arguments'] | tojson }}{{ '}\n</tool_call>' }}{%- endfor %}{{ '<|im_end|>\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{ '<|im_start|>user' }}{%- endif %}"
    "{{ '\n<tool_response>\n' + message['content'] + '\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{ '<|im_end|>\n' }}{%- endif %}"
)
# Tool calling in Llama 3.1's JSON format: the tools as JSON in the first user turn, one call per
# assistant turn as {"name": ..., "parameters": ...}, tool results in an "ipython" turn.
_LLAMA_TOOLS_USER = (
    "{%- if tools and message['role'] == 'user' and loop.index0 == first_user %}"
    "{{ '<|im_start|>user\nGiven the following functions, please respond with a JSON for a function call with "
    "its proper arguments that best answers the given prompt.\n\nRespond in the format {\"name\": function "
    "name, \"parameters\": dictionary of argument name and its value}.Do not use variables.\n\n' }}"
    "{%- for tool in tools %}{{ tool | tojson(indent=4) }}{{ '\n\n' }}{%- endfor %}"
    "{{ message['content'] + '<|im_end|>\n' }}"
)
_LLAMA_CALLS = (
    "{%- elif message['role'] == 'assistant' and message.get('tool_calls') %}"
    "{%- if message['tool_calls'] | length != 1 %}{{ raise_exception('one tool call per turn') }}{%- endif %}"
    "{%- set call = message['tool_calls'][0] %}{%- set call = call['function'] if call['function'] is defined else call %}"
    "{{ '<|im_start|>assistant\n{\"name\": \"' + call['name'] + '\", \"parameters\": ' }}"
    "{{ call['arguments'] | tojson }}{{ '}<|im_end|>\n' }}"
    "{%- elif message['role'] == 'tool' or message['role'] == 'ipython' %}"
    "{{ '<|im_start|>ipython\n' }}{{ message['content'] if message['content'] is string "
    "else message['content'] | tojson }}{{ '<|im_end|>\n' }}"
)


def chat_template(audio: str = "", tools: str = "qwen") -> str:
    """Qwen-style ChatML; ``audio`` is what an audio part renders as (models that hear);
    ``tools``: the tool-call format, "qwen" (Qwen2.5's) or "llama" (Llama 3.1's JSON)."""
    audio_branch = f"{{% elif part['type'] == 'audio' %}}{{{{ '{audio}' }}}}" if audio else ""
    qwen = tools == "qwen"
    return (
        (_QWEN_TOOLS if qwen else "{%- set first_user = namespace(i=-1) %}")
        + ("" if qwen else "{%- for m in messages %}{%- if m['role'] == 'user' and first_user.i < 0 %}"
                           "{%- set first_user.i = loop.index0 %}{%- endif %}{%- endfor %}"
                           "{%- set first_user = first_user.i %}")
        + "{% for message in messages %}"
        + ("{%- if tools and loop.first and message['role'] == 'system' %}" if qwen else _LLAMA_TOOLS_USER)
        + (_QWEN_CALLS if qwen else _LLAMA_CALLS)
        + "{% else %}"
        "{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'text' %}{{ part['text'] }}"
        "{% elif part['type'] == 'image' or part['type'] == 'image_url' %}"
        "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
        "{% elif part['type'] == 'video' or part['type'] == 'video_url' %}"
        "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}" + audio_branch + "{% endif %}"
        "{% endfor %}{% endif %}"
        "{{ '<|im_end|>\n' }}{% endif %}{% endfor %}"
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


def build_tokenizer(vocab_size: int = 512, model_max_length: int = 4096, tools: str = "qwen") -> PreTrainedTokenizerFast:
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
        chat_template=chat_template(tools=tools), extra_special_tokens={"image_token": "<|image_pad|>",
                                                           "video_token": "<|video_pad|>",
                                                           "vision_bos_token": "<|vision_start|>",
                                                           "vision_eos_token": "<|vision_end|>"})
