"""Tiny embedding checkpoints: a BERT saved as sentence-transformers saves one, and a CLIP (text
and image towers in one space) with its image processor."""
from __future__ import annotations

from pathlib import Path

from omnistage.models.tokenizer import build_tokenizer


def build_bert(out: Path) -> None:
    """An embedding model as sentence-transformers saves one: the encoder, then a mean-pooling and
    a normalize module (modules.json), and a 64-token input limit."""
    import json

    from transformers import BertConfig, BertModel
    tok = build_tokenizer()
    config = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                        initializer_range=0.2)
    BertModel(config).eval().save_pretrained(out)
    tok.save_pretrained(out)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 64, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
         "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    (out / "2_Normalize").mkdir()
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))


def build_clip(out: Path) -> None:
    """``CLIPModel`` as a CLIP checkpoint holds it: the model, a tokenizer that ends each text with
    its end-of-text token, which also pads, as CLIP's does (CLIP pools the text at the first one),
    and a ``CLIPImageProcessor`` (32x32 crops)."""
    from tokenizers import processors
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel
    tok = build_tokenizer(model_max_length=32)
    end = tok.pad_token_id  # (not 2: CLIP reads an end token id of 2 as its legacy "highest id" pooling)
    tok.eos_token = tok.pad_token
    tok.backend_tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"$A {tok.pad_token}", special_tokens=[(tok.pad_token, end)])])
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=32, pad_token_id=tok.pad_token_id, eos_token_id=end, bos_token_id=end)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).eval().save_pretrained(out)
    tok.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
