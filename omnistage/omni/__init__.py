"""Qwen2.5-Omni split into stages: the thinker runs on the ``ar`` kind, the talker on the AR
engine fed with the thinker's streamed states (``talker`` kind), token2wav as the ``vocoder`` kind."""
