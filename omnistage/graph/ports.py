"""Port types, the fields a request can carry and the modalities a response can hold."""
from __future__ import annotations

from collections.abc import Mapping
from omnistage.graph.strict import frozen_dict

# A port type names what flows on an edge. "any" matches everything (user python stages).
PORT_TYPES = frozenset({"text", "tokens", "messages", "image", "audio", "video", "tensor", "kv", "media_embeds",
                        "prompt_embeds", "latents", "thinker_states", "codec", "any"})

# request.<field> -> the type it carries.
REQUEST_FIELDS: Mapping[str, str] = frozen_dict({
    "prompt": "text",
    "messages": "messages",
    "images": "image",
    "image": "image",  # the one picture an image-to-image request starts from
    "mask": "image",  # where that picture is repainted (inpainting)
    "audio": "audio",
    "video": "video",
    "input": "text",  # what an embeddings request embeds (strings or token ids)
})

# response.<modality> -> the type a port must have to feed it.
RESPONSE_MODALITIES: Mapping[str, str] = frozen_dict({
    "text": "text",
    "image": "image",
    "audio": "audio",
    "video": "video",
    "embedding": "media_embeds",  # an encode stage's per-token embeddings
    "embeddings": "tensor",  # one vector per input of an embeddings request
    "tokens": "tokens",  # the generated token ids (a request asks with return_token_ids: true)
    "logprobs": "any",  # per-token log probabilities of the text, when a request asks for them
    "progress": "any",  # denoising progress of an image or video request, streamed
})


def compatible(produced: str, accepted: str) -> bool:
    return produced == accepted or "any" in (produced, accepted)
